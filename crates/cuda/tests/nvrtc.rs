//! The kernel module compiles to a cubin with NVRTC (no device needed): the image the backend loads.
//! Skipped, with a message, when libnvrtc cannot be loaded (e.g. CI). To run it here without a GPU:
//! `LD_LIBRARY_PATH=/tmp/cu13/nvidia/cu13/lib OCTET_CUDA_INCLUDE=/tmp/cu13/nvidia/cu13/include
//! cargo test -p octet-cuda --features cuda --test nvrtc` (wheels as in tools/cuda/nvrtc_check.py).
#![cfg(feature = "cuda")]

use octet_cuda::{CudaError, compile_cubin};

#[test]
fn kernels_compile_to_an_sm90_cubin() {
    let cubin = match compile_cubin("sm_90") {
        Ok(cubin) => cubin,
        Err(CudaError::Unavailable(why)) => {
            eprintln!("SKIPPED kernels_compile_to_an_sm90_cubin: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    // An ELF image (the cubin container), not PTX text.
    assert_eq!(&cubin[..4], b"\x7fELF", "not an ELF cubin");
    // Every entry point is in its symbol table (names are extern "C", so they appear verbatim).
    for name in octet_cuda::kernels::KERNEL_NAMES {
        let found = cubin.windows(name.len() + 1).any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0);
        assert!(found, "entry point {name} missing from the cubin");
    }
}

#[test]
fn a_virtual_architecture_is_refused_with_a_clear_error() {
    match compile_cubin("compute_90") {
        Err(CudaError::Unavailable(why)) => {
            eprintln!("SKIPPED a_virtual_architecture_is_refused_with_a_clear_error: {why}")
        }
        Err(CudaError::Compile { arch, log }) => {
            assert_eq!(arch, "compute_90");
            assert!(log.contains("no cubin"), "{log}");
        }
        Ok(_) => panic!("a cubin for a virtual architecture"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}
