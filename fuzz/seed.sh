#!/usr/bin/env bash
# Seed corpora for the fuzz targets (fuzz/corpus/<target>/, not committed) from the test fixtures,
# a tiny training run of the built octet binary, and small synthetic files; also regenerates the
# two state.json files the checkpoint_tensors target embeds (fuzz/seeds/).
# Usage: bash fuzz/seed.sh   (needs target/release/octet: cargo build --release -p octet-cli)
set -euo pipefail
cd "$(dirname "$0")/.."
OCTET=${OCTET:-target/release/octet}
C=fuzz/corpus
S=fuzz/seeds
mkdir -p $C/{cif,poscar,extxyz,gguf,checkpoint_state,checkpoint_tensors,token_shard,train_config,materials_dataset,oracle_answer,corpus_jsonl,journal}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

cp crates/materials/tests/data/*.cif $C/cif/
cp $S/*.poscar $C/poscar/
cp $S/*.extxyz $C/extxyz/

# A tiny run at fp32 and fp8-o2: state.json (as version 2, no manifest), tensors, token shard.
head -c 20000 crates/cli/assets/python-docs.txt > "$tmp/c.txt"
for p in fp32 fp8-o2; do
  "$OCTET" train --data "$tmp/c.txt" --out "$tmp/$p" --model tiny --n-layer 1 --n-embd 32 --n-head 2 \
    --batch 2 --seq 16 --vocab-size 300 --steps 1 --precision $p --json > /dev/null
  ck="$tmp/$p/ckpt-000001"
  python3 - "$ck/state.json" "$S/state_${p/-/}.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); s["version"] = 2; s["train"]["out"] = "run"; s["train"]["data"] = None
json.dump(s, open(sys.argv[2], "w"), indent=1)
PY
  cp "$S/state_${p/-/}.json" "$C/checkpoint_state/state_$p.json"
  python3 - "$ck" "$C/checkpoint_tensors/$p.bin" "$p" <<'PY'
import struct, sys
ck, out, p = sys.argv[1:]
m = open(ck + "/model.safetensors", "rb").read(); o = open(ck + "/optimizer.safetensors", "rb").read()
open(out, "wb").write(bytes([1 if p == "fp8-o2" else 0]) + struct.pack("<I", len(m)) + m + o)
PY
done
cp "$tmp/fp32/data/train.bin" $C/token_shard/
python3 - "$C/gguf" <<'PY'
# Small GGUF llama files (one layer, d=8, vocabulary 6) with a GPT-2 style tokenizer, F32 and Q8_0.
import sys, numpy as np, gguf
out = sys.argv[1]
for ty in ("f32", "q8_0"):
    w = gguf.GGUFWriter(f"{out}/tiny_{ty}.gguf", "llama")
    d, ff, v = 32, 64, 6
    w.add_context_length(16); w.add_embedding_length(d); w.add_block_count(1)
    w.add_feed_forward_length(ff); w.add_head_count(2); w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("smollm")
    w.add_token_list(["a", "b", "c", "ab", "<|im_start|>", "<|im_end|>"])
    w.add_token_types([1, 1, 1, 1, 3, 3]); w.add_token_merges(["a b"])
    w.add_bos_token_id(4); w.add_eos_token_id(5)
    rng = np.random.default_rng(0)
    def t(name, shape):
        a = rng.standard_normal(shape).astype(np.float32)
        if ty == "q8_0" and len(shape) == 2:
            w.add_tensor(name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)
    t("token_embd.weight", (v, d)); t("output_norm.weight", (d,))
    t("blk.0.attn_norm.weight", (d,)); t("blk.0.ffn_norm.weight", (d,))
    t("blk.0.attn_q.weight", (d, d)); t("blk.0.attn_k.weight", (d // 2, d)); t("blk.0.attn_v.weight", (d // 2, d))
    t("blk.0.attn_output.weight", (d, d)); t("blk.0.ffn_gate.weight", (ff, d)); t("blk.0.ffn_up.weight", (ff, d))
    t("blk.0.ffn_down.weight", (d, ff))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
PY
cat > $C/train_config/small.toml <<'T'
model = "small"
precision = "fp8-o2"
steps = 100
batch = 4
seq = 64
lr = 1e-3
T
cat > $C/train_config/llama.toml <<'T'
arch = "llama"
model = "tiny"
block = "sas-p"
n_layer = 2
grad_accum = 2
T
cp $S/*.jsonl $C/materials_dataset/ 2>/dev/null || true
cp $S/oracle_*.txt $C/oracle_answer/
cp $S/corpus.jsonl $C/corpus_jsonl/
cp $S/journal.jsonl $C/journal/
echo "seeded: $(find $C -type f | wc -l) files in $C"
