"""What a forked worker's private pages hold: its writable anonymous pages compared with its parent's, page by page.

    python -m bench.footprint_pages SUPERVISOR_PID WORKER_PID     # as root: /proc/PID/pagemap shows frames to root only
    python -m bench.footprint --workers 1 --pages                  # the same, on an idle instance it starts

For each page both processes map at the same address (everything the worker inherited), /proc/PID/pagemap tells
whether they still share one physical frame or each has its own (a copy made when either wrote to it after the
fork). Each copied page is then compared word by word (/proc/PID/mem) and sorted into:
- identical: written and put back, as a reference count incremented and decremented again does (reading a
  Python object from Python writes its refcount on 3.11);
- refcounts only: every changed word is an object's reference count (the word after it points to a type);
- other writes: anything else changed too (new objects in free blocks, dict and list storage, quickened bytecode,
  allocator headers).
Pages only one process has are its own (allocated after the fork into fresh memory). The refcount lines name the
types whose counts changed most. Copied pages cost the instance one page each (the copy), whichever side wrote.
"""
from __future__ import annotations

import argparse
import collections
import struct
import sys
from typing import BinaryIO

PAGE = 4096
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
WORDS = PAGE // 8


def writable_anonymous(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, name) of pid's writable mappings backed by no file ([heap], [stack], anonymous)."""
    found = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            name = parts[5].strip() if len(parts) > 5 else "[anon]"
            if "w" in parts[1] and not name.startswith("/") and not name.startswith("anon_inode"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                found.append((start, end, name))
    return found


def frames(pagemap: BinaryIO, start: int, end: int) -> tuple[int, ...]:
    """The pagemap entries (present bit, frame number) of each page from start to end."""
    pagemap.seek(start // PAGE * 8)
    data = pagemap.read((end - start) // PAGE * 8)
    return struct.unpack(f"{len(data) // 8}Q", data)


class Memory:
    """Reads another process's memory (same user, or root)."""

    def __init__(self, pid: int) -> None:
        self.file = open(f"/proc/{pid}/mem", "rb")

    def read(self, address: int, size: int) -> bytes | None:
        if not 0x1000 <= address < 1 << 47:
            return None
        try:
            self.file.seek(address)
            return self.file.read(size)
        except (OSError, ValueError):
            return None

    def type_name(self, address: int, cache: dict[int, str | None]) -> str | None:
        """tp_name if `address` looks like a type object (its own type's tp_name says type or a metaclass)."""
        if address in cache:
            return cache[address]
        name = None
        head = self.read(address, 32) if address % 8 == 0 else None
        if head and len(head) == 32:
            _, meta, _, tp_name = struct.unpack("4Q", head)
            meta_name = self.read(meta + 24, 8)
            if meta_name and len(meta_name) == 8:
                text = self.read(struct.unpack("Q", meta_name)[0], 64)
                if text and text.split(b"\0")[0] in (b"type", b"ABCMeta", b"EnumType", b"_ProtocolMeta"):
                    raw = self.read(tp_name, 80)
                    name = raw.split(b"\0")[0].decode("latin-1") if raw else None
        cache[address] = name
        return name


def compare(parent: int, child: int) -> dict[str, collections.Counter[str]]:
    """Pages by mapping and state, and refcount changes by type."""
    pages: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    refcounts: collections.Counter[str] = collections.Counter()
    theirs = {(s, e) for s, e, _ in writable_anonymous(child)}
    pmem, cmem = Memory(parent), Memory(child)
    types: dict[int, str | None] = {}
    with open(f"/proc/{parent}/pagemap", "rb") as ppm, open(f"/proc/{child}/pagemap", "rb") as cpm:
        for start, end, name in writable_anonymous(parent):
            group = name if name.startswith("[") and name != "[anon]" else "anonymous"
            if (start, end) not in theirs:
                continue            # mapped after the fork (or resized since): not inherited as it is
            for i, (p, c) in enumerate(zip(frames(ppm, start, end), frames(cpm, start, end))):
                if not p & PRESENT or not c & PRESENT:
                    pages[f"{group}: one process only"] += bool(p & PRESENT) + bool(c & PRESENT)
                    continue
                if not p & PFN_MASK:
                    sys.exit("/proc/PID/pagemap hides frame numbers: run this as root")
                if p & PFN_MASK == c & PFN_MASK:
                    pages[f"{group}: shared"] += 1
                    continue
                pages[f"{group}: copied"] += 1
                a, b = pmem.read(start + i * PAGE, PAGE), cmem.read(start + i * PAGE, PAGE)
                if not a or not b or len(a) < PAGE or len(b) < PAGE:
                    continue
                wa, wb = struct.unpack(f"{WORDS}Q", a), struct.unpack(f"{WORDS}Q", b)
                changed = [j for j in range(WORDS) if wa[j] != wb[j]]
                other = 0
                for j in changed:
                    kind = None         # a refcount: a small change, and the next word (ob_type) names a type
                    if j + 1 < WORDS and wa[j + 1] == wb[j + 1] and abs(wa[j] - wb[j]) < 1 << 20:
                        kind = pmem.type_name(wa[j + 1], types)
                    if kind is None:
                        other += 1
                    else:
                        refcounts[kind] += 1
                kinds["identical (written and put back)" if not changed else
                      "refcounts only" if not other else "other writes"] += 1
    return {"pages": pages, "copied": kinds, "refcounts": refcounts}


def report(parent: int, child: int) -> None:
    found = compare(parent, child)
    print(f"\npages of the worker (pid {child}) against its parent (pid {parent})")
    print("| mapping: state | pages | MiB |")
    print("|---|---|---|")
    for key, n in sorted(found["pages"].items()):
        print(f"| {key} | {n} | {n * PAGE / 2**20:.2f} |")
    print("\n| copied pages, by what changed | pages | MiB |")
    print("|---|---|---|")
    for key, n in found["copied"].most_common():
        print(f"| {key} | {n} | {n * PAGE / 2**20:.2f} |")
    top = ", ".join(f"{name} {n}" for name, n in found["refcounts"].most_common(8))
    print(f"\nreference counts changed, by type (words): {top}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parent", type=int)
    parser.add_argument("child", type=int)
    args = parser.parse_args(argv)
    report(args.parent, args.child)
    return 0


if __name__ == "__main__":
    sys.exit(main())
