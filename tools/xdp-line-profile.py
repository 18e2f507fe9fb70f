#!/usr/bin/env python3
"""Where lb_xdp spends its time, by line of Rust source.

    sudo tools/xdp-line-profile.py [RUNS] [-- COMMAND ...]
    LB_PROFILE_PROG=lb_xdp6 LB_PROFILE_SECONDS=8 sudo tools/xdp-line-profile.py 3

Runs COMMAND (default: `target/release/lb-bench per-packet`, built by
`cargo build --release -p lb-bench --bin lb-bench`) RUNS times (default 5). Each time it waits
for the command to load a program named lb_xdp, samples every CPU with
`perf record` for 0.4 s, and charges each sample that landed in that
load's JITed program to the BTF line
record that covers its address (`bpf_prog_info.jited_line_info`): this
machine's bpftool has no disassembler, but the kernel keeps that map from
JIT addresses to source lines. Prints the lines that took the most samples.

Needs root, perf and bpftool. A sample is charged to the last line record
at or before its address, so a hot load often shows as the line just
before the one that uses the value. Only lb_xdp's own image is counted:
time in the `lb_least_connections` subprogram (the `lc` scheduler) and in
kernel helpers does not show.
"""
import bisect
import collections
import ctypes
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

# The program to profile (`LB_PROFILE_PROG`, default lb_xdp; lb_xdp6 for the
# IPv6 rows) and how long each run is sampled (`LB_PROFILE_SECONDS`).
PROG = os.environ.get("LB_PROFILE_PROG", "lb_xdp")
SECONDS = float(os.environ.get("LB_PROFILE_SECONDS", "0.4"))

BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
SYS_BPF = 321  # x86-64
INFO_SIZE = 232  # struct bpf_prog_info up to attach_btf_id, 8-byte aligned

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    if libc.syscall(SYS_BPF, cmd, buf, 128) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf


def prog_info(fd, fields):
    """bpf_prog_info with `fields` ((offset, struct format, value)) set first."""
    info = ctypes.create_string_buffer(INFO_SIZE)
    for off, fmt, val in fields:
        struct.pack_into(fmt, info, off, val)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, INFO_SIZE, ctypes.addressof(info)))
    return info


def jited_lines(prog_id):
    """[(offset in the JIT image, BPF instruction index)], the image's address and size."""
    fd = libc.syscall(SYS_BPF, BPF_PROG_GET_FD_BY_ID,
                      ctypes.create_string_buffer(struct.pack("III", prog_id, 0, 0), 128), 128)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_PROG_GET_FD_BY_ID")
    first = prog_info(fd, [])
    (nr_ksyms,) = struct.unpack_from("I", first, 104)
    (nr_lines,) = struct.unpack_from("I", first, 148)
    lines = ctypes.create_string_buffer(nr_lines * 16)
    jited = ctypes.create_string_buffer(nr_lines * 8)
    ksyms = ctypes.create_string_buffer(max(nr_ksyms, 1) * 8)
    prog_info(fd, [
        (104, "I", nr_ksyms), (112, "Q", ctypes.addressof(ksyms)),
        (148, "I", nr_lines), (152, "Q", ctypes.addressof(lines)),
        (160, "Q", ctypes.addressof(jited)), (168, "I", nr_lines),
        (172, "I", 16), (176, "I", 8),
    ])
    os.close(fd)
    (size,) = struct.unpack_from("I", first, 16)
    (base,) = struct.unpack_from("Q", ksyms, 0)
    records = []
    for i in range(nr_lines):
        (addr,) = struct.unpack_from("Q", jited, i * 8)
        (insn,) = struct.unpack_from("I", lines, i * 16)
        records.append((addr - base, insn))
    records.sort()
    return records, base, size


def source_lines(prog_id):
    """BPF instruction index -> the source line bpftool prints above it."""
    out = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(prog_id), "linum"],
                         check=True, capture_output=True, text=True).stdout
    by_insn, current = {}, None
    for line in out.splitlines():
        if line.startswith(";"):
            current = line[1:].strip()
        match = re.match(r"\s*(\d+):", line)
        if match:
            by_insn[int(match.group(1))] = current
    return by_insn


def lb_xdp_ids():
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    return {int(l.split(":")[0]) for l in out.splitlines() if f" name {PROG} " in l}


def new_lb_xdp(seen, deadline):
    while time.time() < deadline:
        fresh = lb_xdp_ids() - seen
        if fresh:
            return max(fresh)
        time.sleep(0.02)
    sys.exit(f"no new program named {PROG} appeared within 30 s")


def profile_one_load(command, seconds, seen, counts, by_insn):
    """Runs `command` once, samples its lb_xdp for `seconds`, adds to `counts`."""
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handle, data = tempfile.mkstemp(prefix="xdp-line-profile-", suffix=".data")
    os.close(handle)
    try:
        prog_id = new_lb_xdp(seen, time.time() + 30)
        seen.add(prog_id)
        records, base, size = jited_lines(prog_id)
        if not by_insn:
            by_insn.update(source_lines(prog_id))
        subprocess.run(["perf", "record", "-q", "-a", "-F", "20000", "-o", data,
                        "--", "sleep", str(seconds)], check=True, stderr=subprocess.DEVNULL)
    finally:
        run.wait(timeout=600)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"],
                            capture_output=True, text=True).stdout
    os.unlink(data)
    starts = [r[0] for r in records]
    for line in script.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].endswith(f"_{PROG}"):
            continue
        offset = int(parts[0], 16) - base
        if not 0 <= offset < size:
            continue  # another load of the program, elsewhere in memory
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0:
            counts[records[i][1]] += 1


def main():
    args = sys.argv[1:]
    rounds = int(args.pop(0)) if args and args[0] != "--" else 5
    command = args[1:] if args[:1] == ["--"] else ["target/release/lb-bench", "per-packet"]
    counts, by_insn, seen = collections.Counter(), {}, lb_xdp_ids()
    for _ in range(rounds):
        profile_one_load(command, SECONDS, seen, counts, by_insn)
    total = sum(counts.values())
    if total == 0:
        sys.exit(f"no sample landed in {PROG} (does the command run it?)")
    print(f"{total} samples in {PROG} over {rounds} runs of {' '.join(command)}")
    for insn, n in counts.most_common(25):
        print(f"{100 * n / total:5.1f}%  insn {insn:5d}  {(by_insn.get(insn) or '?')[:150]}")


if __name__ == "__main__":
    main()
