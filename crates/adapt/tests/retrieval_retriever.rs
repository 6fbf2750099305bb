//! Contrastive fine-tuning: the InfoNCE loss against its f64 reference and its backward against
//! central finite differences; the trainer on the tiny golden BERT (a 32-token WordPiece vocabulary
//! written here): loss finite, checkpoints complete, and a run interrupted and resumed ends with the
//! same parameters as an uninterrupted one.

use std::path::{Path, PathBuf};

use octet_adapt::retrieval::contrastive::{infonce_backward, infonce_forward, infonce_reference};
use octet_adapt::retrieval::retriever::{RetrieverOptions, load_params, train, training_pairs};
use octet_core::{Rng, Tolerance};

mod common;

fn unit_rows(rng: &mut Rng, n: usize, c: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n * c).map(|_| rng.normal()).collect();
    for r in v.chunks_mut(c) {
        let s = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        r.iter_mut().for_each(|x| *x /= s);
    }
    v
}

#[test]
fn infonce_matches_reference_and_finite_differences() {
    let (b, n, c, tau) = (4, 6, 5, 0.07);
    let mut rng = Rng::new(11);
    let q = unit_rows(&mut rng, b, c);
    let p = unit_rows(&mut rng, n, c);
    let mut probs = vec![0f64; b * n];
    let loss = infonce_forward(&mut probs, &q, &p, b, n, c, tau);
    assert!((loss - infonce_reference(&q, &p, b, n, c, tau)).abs() < 1e-12);
    let (mut dq, mut dp) = (vec![0f64; b * c], vec![0f64; n * c]);
    infonce_backward(&mut dq, &mut dp, &probs, &q, &p, b, n, c, tau);
    let h = 1e-6;
    let fd = |x: &[f64], which: u8| -> Vec<f64> {
        (0..x.len())
            .map(|i| {
                let (mut a, mut z) = (x.to_vec(), x.to_vec());
                a[i] += h;
                z[i] -= h;
                let l = |v: &[f64]| {
                    if which == 0 {
                        infonce_reference(v, &p, b, n, c, tau)
                    } else {
                        infonce_reference(&q, v, b, n, c, tau)
                    }
                };
                (l(&a) - l(&z)) / (2.0 * h)
            })
            .collect()
    };
    let tol = Tolerance { atol: 1e-7, rtol: 1e-6 };
    tol.check("dq", &dq, &fd(&q, 0)).unwrap();
    tol.check("dp", &dp, &fd(&p, 1)).unwrap();
    // f32 against f64.
    let (q32, p32): (Vec<f32>, Vec<f32>) =
        (q.iter().map(|&v| v as f32).collect(), p.iter().map(|&v| v as f32).collect());
    let mut pr32 = vec![0f32; b * n];
    let l32 = infonce_forward(&mut pr32, &q32, &p32, b, n, c, tau);
    Tolerance::F32.check("loss f32", &[l32], &[loss]).unwrap();
    let (mut dq32, mut dp32) = (vec![0f32; b * c], vec![0f32; n * c]);
    infonce_backward(&mut dq32, &mut dp32, &pr32, &q32, &p32, b, n, c, tau);
    Tolerance::F32.check("dq f32", &dq32, &dq).unwrap();
}

/// A model directory with the tiny golden BERT and a corpus of training documents.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let model = common::tiny_encoder(dir, "model");
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let topics = ["uart fifo reset", "aes cipher key", "flash page erase", "timer counter interrupt", "bus read write"];
    let mut lines = String::new();
    for (i, t) in topics.iter().enumerate() {
        let body = format!("the {t} register {t} enable data of the {t} block ").repeat(4);
        let text = format!("# Doc {i}\n\n## The {t}\n\n{body}\n\n## How do i {t}\n\n{body}\n");
        let doc = serde_json::json!({"id": format!("{i:016x}"), "source": "s", "licence": "MIT", "category": "documentation",
            "split": "train", "path": format!("doc{i}.md"), "text": text});
        lines.push_str(&doc.to_string());
        lines.push('\n');
    }
    std::fs::write(corpus.join("domain.jsonl"), lines).unwrap();
    (model, corpus)
}

fn opts(model: &Path, corpus: &Path, out: &Path, steps: usize) -> RetrieverOptions {
    RetrieverOptions {
        corpus: corpus.to_path_buf(),
        model: model.to_path_buf(),
        out: out.to_path_buf(),
        steps,
        batch: 4,
        lr: 1e-3,
        temperature: 0.1,
        hard_negatives: true,
        checkpoint_every: 1,
        seed: 7,
    }
}

#[test]
fn trainer_checkpoints_and_resumes_to_the_same_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (model, corpus) = fixture(dir.path());
    assert_eq!(training_pairs(&corpus).unwrap().len(), 10);
    let straight = dir.path().join("straight");
    let s = train(&opts(&model, &corpus, &straight, 3), |_, _| {}, &mut |_| {}).unwrap();
    assert_eq!(s.step, 3);
    assert!(s.losses.iter().all(|(_, l)| l.is_finite()));
    let resumed = dir.path().join("resumed");
    train(&opts(&model, &corpus, &resumed, 2), |_, _| {}, &mut |_| {}).unwrap();
    let r = train(&opts(&model, &corpus, &resumed, 3), |_, _| {}, &mut |_| {}).unwrap();
    assert_eq!(r.step, 3);
    assert_eq!(r.losses, s.losses);
    assert_eq!(load_params(&resumed).unwrap(), load_params(&straight).unwrap());
    // Training moved the weights.
    assert_ne!(load_params(&straight).unwrap(), load_params(&model).unwrap());
    // Different flags refuse to resume.
    let mut o = opts(&model, &corpus, &resumed, 4);
    o.batch = 3;
    assert!(train(&o, |_, _| {}, &mut |_| {}).err().unwrap().to_string().contains("resume with the same flags"));
}
