"""Paired comparison of the cloze runs in cloze_smollm2_items.jsonl (no retrieval vs retrieval):
discordant items, exact McNemar test, and a 95% percentile bootstrap of the accuracy difference
resampling documents (1,000 resamples, seed 0). python3 bench/adapt/cloze_paired.py"""
import json, math, random
from collections import Counter, defaultdict

rows = [json.loads(l) for l in open("bench/adapt/cloze_smollm2_items.jsonl")]
r = "retrieval_k3_exclude_document"
pairs = [(x["no_retrieval"]["pick_sum"] == x["answer"], x[r]["pick_sum"] == x["answer"]) for x in rows]
c = Counter(pairs)
print("items", len(rows), "(plain right, retrieval right):", dict(c))
b, w = c[(False, True)], c[(True, False)]
n = b + w
print("exact McNemar p (two-sided):", round(2 * sum(math.comb(n, i) for i in range(min(b, w) + 1)) / 2**n, 4))
g = defaultdict(list)
for x, p in zip(rows, pairs):
    g[x["doc_id"]].append(p)
docs = list(g)
rng = random.Random(0)
d = []
for _ in range(1000):
    s = [g[docs[rng.randrange(len(docs))]] for _ in docs]
    m = sum(len(v) for v in s)
    d.append((sum(q for v in s for _, q in v) - sum(p for v in s for p, _ in v)) / m)
d.sort()
diff = (sum(q for _, q in pairs) - sum(p for p, _ in pairs)) / len(pairs)
print(f"accuracy difference (summed log-likelihood): {diff:+.3f}, 95% bootstrap over documents [{d[24]:+.3f}, {d[974]:+.3f}]")
same = sum(1 for x in rows for p in x[r]["passages"] if p["path"].rsplit("/", 1)[0] == x["path"].rsplit("/", 1)[0])
print("retrieved passages from the item's directory:", same, "of", sum(len(x[r]["passages"]) for x in rows))
# With the index's passages.jsonl as argument: how many items got a passage naming the answer, and
# their accuracy with retrieval.
import sys
if len(sys.argv) > 1:
    text = {}
    for l in open(sys.argv[1]):
        p = json.loads(l)
        text[(p["path"], p["start"])] = p["text"]
    hit = [any(x["options"][x["answer"]].strip() in text[(p["path"], p["start"])] for p in x[r]["passages"]) for x in rows]
    k = sum(hit)
    right = lambda sel: sum(q for (p, q), h in zip(pairs, hit) if h == sel)
    plain = lambda sel: sum(p for (p, q), h in zip(pairs, hit) if h == sel)
    print(f"items with a retrieved passage naming the answer: {k}; accuracy there {plain(True)}/{k} -> {right(True)}/{k}; "
          f"elsewhere {plain(False)}/{len(rows) - k} -> {right(False)}/{len(rows) - k}")
