"""CPU seconds per training step, 1 process vs `mpirun -np 2` (issue 17's overhead question on a
shared machine, where wall-clock tok/s measures the CPU share the scheduler grants, not the work).

Per-step CPU = (CPU of an N2-step run - CPU of an N1-step run) / (N2 - N1), user + system time of the
job and all its processes (getrusage of waited-for children, which includes mpirun's ranks), so data
preparation and start-up cancel. Writes one JSON line per (level, ranks) to stdout."""
import json, resource, subprocess, sys, tempfile

OCTET = "target/release/octet"
MPI = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2"]


def cpu_of(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    n1, n2 = 20, 120
    for level in sys.argv[1:] or ["fp32", "fp8-o2"]:
        for ranks in (1, 2):
            cpu = {}
            for n in (n1, n2):
                with tempfile.TemporaryDirectory() as d:
                    args = [OCTET, "train", "--precision", level, "--steps", str(n), "--eval-every", "0",
                            "--checkpoint-every", "0", "--json", "--out", d + "/run"]
                    cpu[n] = cpu_of((MPI if ranks == 2 else []) + args)
            per_step = (cpu[n2] - cpu[n1]) / (n2 - n1)
            print(json.dumps({"level": level, "ranks": ranks, "cpu_s_per_step": per_step,
                              "tokens_per_cpu_s": 16 * 128 / per_step, "cpu_s": cpu}), flush=True)


main()
