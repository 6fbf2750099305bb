#!/usr/bin/env python3
"""Compile-check octet's CUDA kernels offline, without a GPU: NVRTC from PyPI, loaded with ctypes.

The kernel sources are the raw-string constants of crates/cuda/src/kernels.rs (PRELUDE and one per
operation). Each operation is compiled on its own (PRELUDE + op, so an error names its kernel), then the
whole module (what the backend compiles at run time) is compiled and its PTX checked for every entry
point in KERNEL_NAMES (the list is read from kernels.rs, never kept here). The AdamW entry points
(`adam*`) must contain no `fma` instruction: their bit-identity with the CPU optimizer rests on every
multiply and add being rounded on its own. NVRTC needs no driver or GPU; the headers (cuda_fp8.h,
cuda_bf16.h, cuda_fp16.h and their includes) come from the CUDA runtime wheel. Exit status 0 iff
everything compiles and the checks hold. `--ptx FILE` also writes the module's PTX.

    pip download nvidia-cuda-nvrtc nvidia-cuda-runtime --no-deps -d /tmp/cu13   # CUDA 13 wheels
    (cd /tmp/cu13 && for w in *.whl; do unzip -qo "$w"; done)
    python3 tools/cuda/nvrtc_check.py --nvrtc /tmp/cu13/nvidia/cu13/lib/libnvrtc.so.13 \
        -I /tmp/cu13/nvidia/cu13/include --arch sm_90
    # CUDA 12: nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12, then
    #   --nvrtc /tmp/cu12/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 -I /tmp/cu12/nvidia/cuda_runtime/include

`--resources FILE` writes every kernel's registers, spills, stack frame and shared memory as ptxas
reports them (NVRTC `--ptxas-options=-v`; the record is tools/cuda/resources-sm_90.txt).

Last run (issue 7, Llama ops: RMSNorm, RoPE, SwiGLU, repeat_kv, embedding): NVRTC 13.5 and 12.9, sm_90
(and sm_80 on 13.5): 73/73 entry points, AdamW entry points free of fma.
"""
import argparse
import ctypes
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
KERNELS_RS = ROOT / "crates" / "cuda" / "src" / "kernels.rs"


def extract(path):
    """(constants, kernel names): every `pub const NAME: &str = r#"..."#;` and the KERNEL_NAMES list."""
    text = path.read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = r#"(.*?)"#;', text, re.S))
    names_block = re.search(r"pub const KERNEL_NAMES: \[&str; \d+\] = \[(.*?)\];", text, re.S).group(1)
    return consts, re.findall(r'"(\w+)"', names_block)


class Nvrtc:
    def __init__(self, lib):
        self.lib = ctypes.CDLL(lib)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
        self.version = (major.value, minor.value)

    def check(self, rc):
        if rc != 0:
            raise RuntimeError(self.lib.nvrtcGetErrorString(rc).decode())

    def compile(self, src, name, options):
        """(ok, log, ptx)."""
        prog = ctypes.c_void_p()
        self.check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None))
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        rc = self.lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        self.check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)))
        log = ctypes.create_string_buffer(size.value)
        self.check(self.lib.nvrtcGetProgramLog(prog, log))
        ptx = b""
        if rc == 0:
            self.check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)))
            buf = ctypes.create_string_buffer(size.value)
            self.check(self.lib.nvrtcGetPTX(prog, buf))
            ptx = buf.value
        self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return rc == 0, log.value.decode(errors="replace").strip(), ptx.decode(errors="replace")


def resources(nvrtc, src, options, names, path):
    """Compile the module to a cubin with `--ptxas-options=-v` and write one line per kernel: registers,
    spill stores / loads, stack frame and static shared memory (bytes), as ptxas reports them. Fails if
    a kernel is missing from the report."""
    ok, log, _ = nvrtc.compile(src, "octet.cu", options + ["--ptxas-options=-v"])
    if not ok:
        print("  resources FAILED: " + log)
        return 1
    rows, cur = {}, None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            cur = m.group(1)
            rows[cur] = {"regs": 0, "spill_st": 0, "spill_ld": 0, "stack": 0, "smem": 0}
        elif cur and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            rows[cur].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        elif cur and (m := re.search(r"Used (\d+) registers", line)):
            rows[cur]["regs"] = int(m.group(1))
            if sm := re.search(r"(\d+) bytes smem", line):
                rows[cur]["smem"] = int(sm.group(1))
    missing = [n for n in names if n not in rows]
    arch = next(o.split("=")[1] for o in options if o.startswith("--gpu-architecture="))
    lines = [f"# octet CUDA kernels: ptxas -v through NVRTC {nvrtc.version[0]}.{nvrtc.version[1]}, {arch} "
             f"(tools/cuda/nvrtc_check.py --resources)",
             f"{'kernel':<32} {'regs':>5} {'spill st':>9} {'spill ld':>9} {'stack':>6} {'smem':>6}"]
    for n in names:
        if n in rows:
            r = rows[n]
            lines.append(f"{n:<32} {r['regs']:>5} {r['spill_st']:>9} {r['spill_ld']:>9} {r['stack']:>6} {r['smem']:>6}")
    spills = [n for n in names if n in rows and rows[n]["spill_st"] + rows[n]["spill_ld"] > 0]
    lines.append(f"# {len(rows)} kernels, {len(spills)} with spills{': ' + ', '.join(spills) if spills else ''}")
    pathlib.Path(path).write_text("\n".join(lines) + "\n")
    print(f"  {'resources':<10} {'ok' if not missing else 'FAILED'}: {len(names) - len(missing)}/{len(names)} kernels "
          f"in the ptxas report, {len(spills)} with spills -> {path}")
    if missing:
        print(f"    missing from the report: {', '.join(missing)}")
    return 1 if missing else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvrtc", required=True, help="path to libnvrtc.so")
    ap.add_argument("-I", dest="include", action="append", default=[], help="include directory (cuda_fp8.h)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--ptx", help="also write the whole module's PTX here")
    ap.add_argument("--resources", help="also write every kernel's registers, spills, stack and shared memory "
                    "(ptxas -v through NVRTC, for --arch) to this file")
    args = ap.parse_args()

    consts, names = extract(KERNELS_RS)
    prelude = consts.pop("PRELUDE")
    nvrtc = Nvrtc(args.nvrtc)
    options = [f"--gpu-architecture={args.arch}", "--std=c++17"] + [f"-I{d}" for d in args.include]
    print(f"NVRTC {nvrtc.version[0]}.{nvrtc.version[1]}, options {' '.join(options)}")

    failed = 0
    for name, body in consts.items():
        ok, log, _ = nvrtc.compile(prelude + body, f"{name.lower()}.cu", options)
        print(f"  {name:<10} {'ok' if ok else 'FAILED'}")
        if log:
            print("    " + log.replace("\n", "\n    "))
        failed += not ok

    ok, log, ptx = nvrtc.compile(prelude + "".join(consts.values()), "octet.cu", options)
    missing = [n for n in names if f".entry {n}(" not in ptx] if ok else names
    print(f"  {'module':<10} {'ok' if ok else 'FAILED'}: {len(names) - len(missing)}/{len(names)} entry points, "
          f"{len(ptx)} bytes of PTX")
    if log:
        print("    " + log.replace("\n", "\n    "))
    if missing:
        print(f"    missing entry points: {', '.join(missing)}")
    failed += (not ok) + bool(missing)
    if ok and args.ptx:
        pathlib.Path(args.ptx).write_text(ptx)

    if args.resources:
        failed += resources(nvrtc, prelude + "".join(consts.values()), options, names, args.resources)

    # Entry bodies run from ".entry NAME(" to the closing brace at the start of a line.
    fused = []
    for name in names:
        if name.startswith("adam") and f".entry {name}(" in ptx:
            body = ptx.split(f".entry {name}(", 1)[1].split("\n}\n", 1)[0]
            if re.search(r"\bfma\.", body):
                fused.append(name)
    adam = [n for n in names if n.startswith("adam")]
    print(f"  {'no-fma':<10} {'ok' if not fused else 'FAILED'}: {len(adam) - len(fused)}/{len(adam)} AdamW entry points "
          "without fma")
    failed += bool(fused)
    print("all kernels compile" if not failed else f"{failed} failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
