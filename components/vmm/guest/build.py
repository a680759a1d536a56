"""Build the freestanding x86 test guest into a flat binary.

The guest (``start.S``, ``start64.S``, ``kernel.c``, ``guest.h``, ``guest.ld``,
``guest64.ld`` next to this module) is compiled with Debian's gcc and binutils
only, for one of two architectures:

- ``i386``: 32-bit protected mode, ``gcc -m32`` for ``start.S`` and
  ``kernel.c``, ``ld -m elf_i386 -T guest.ld``;
- ``x86_64``: 64-bit long mode, ``gcc -m64 -mno-red-zone -mcmodel=small`` for
  ``start64.S`` and ``kernel.c``, ``ld -m elf_x86_64 -T guest64.ld``;

both linked at 0x100000 and flattened with ``objcopy -O binary``.  See
``README.md`` for what it runs.

Usage: ``python -m dominoes.components.vmm.guest.build OUT [--iterations N]
[--scenario S] [--arch {i386,x86_64}]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ("ARCHES", "SCENARIOS", "build_guest", "main")

SOURCE_DIR: Final = Path(__file__).resolve().parent

#: Scenario names, in the order of their ``SCENARIO_*`` numbers in ``guest.h``.
SCENARIOS: Final = ("normal", "bad_port", "bad_mmio", "triple_fault", "spin")

#: Architectures the guest builds for: 32-bit protected mode or 64-bit long mode.
ARCHES: Final = ("i386", "x86_64")

_MAX_ITERATIONS: Final = 0xFFFF_FFFF

#: Flags for both architectures; ``_ARCH_CFLAGS`` adds the architecture's own.
_CFLAGS: Final = (
    "-std=gnu11",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-fno-zero-initialized-in-bss",
    "-nostdlib",
    "-nostdinc",
    "-O2",
    "-mno-sse",
    "-mno-mmx",
    "-mno-80387",
    "-mgeneral-regs-only",
    "-Wall",
    "-Wextra",
)


@dataclass(frozen=True)
class _Arch:
    """How to build for one architecture: gcc's flags, its start file, ld's emulation and script."""

    cflags: tuple[str, ...]
    start: str
    emulation: str
    script: str


_ARCH: Final = {
    "i386": _Arch(("-m32", "-march=i686"), "start.S", "elf_i386", "guest.ld"),
    # -mno-red-zone: an exception pushes its frame right below RSP; -mcmodel=small:
    # the image and everything it addresses lie below 2 GiB (MMIO is reached
    # through 32-bit constants, zero-extended).
    "x86_64": _Arch(
        ("-m64", "-mno-red-zone", "-mcmodel=small"), "start64.S", "elf_x86_64", "guest64.ld"
    ),
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(
            f"{name!r} not found on PATH: building the test guest needs gcc and binutils "
            "(Debian: apt-get install gcc binutils)"
        )
    return path


def _gcc_include_dir(gcc: str, machine: str) -> str:
    """gcc's own header directory (``stdint.h`` for freestanding code), since
    ``-nostdinc`` keeps the host's libc headers out."""
    done = subprocess.run(
        [gcc, machine, "-print-file-name=include"],
        capture_output=True,
        text=True,
        check=False,
    )
    include = done.stdout.strip()
    if done.returncode != 0 or not Path(include, "stdint.h").is_file():
        raise RuntimeError(
            f"cannot find gcc's freestanding headers (gcc -print-file-name=include "
            f"gave {include!r}): {done.stderr.strip()}"
        )
    return include


def _run(cmd: Sequence[str], cwd: Path) -> None:
    done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"building the test guest failed: {' '.join(cmd)} exited with "
            f"{done.returncode}:\n{done.stderr.strip() or done.stdout.strip()}"
        )


def build_guest(
    out: Path, *, iterations: int = 100_000, scenario: str = "normal", arch: str = "i386"
) -> Path:
    """Compile the guest for ``scenario`` and ``arch`` and write its flat image to ``out``.

    ``iterations`` is how many times each vCPU adds 1 to the counter device
    (the normal scenario).  ``arch`` is one of :data:`ARCHES`: ``"i386"`` (the
    vCPUs start in 32-bit protected mode) or ``"x86_64"`` (they start in long
    mode).  Returns ``out``.  Raises :class:`ValueError` for an unknown
    scenario or architecture or an iteration count outside 0..2**32-1,
    :class:`FileNotFoundError` if gcc, ld or objcopy is missing, and
    :class:`RuntimeError` (with the tool's messages) if a step fails.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown guest scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    if arch not in ARCHES:
        raise ValueError(f"unknown guest architecture {arch!r}; one of {', '.join(ARCHES)}")
    target = _ARCH[arch]
    if isinstance(iterations, bool) or not 0 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be in 0..{_MAX_ITERATIONS}, not {iterations!r}")
    gcc, ld, objcopy = _tool("gcc"), _tool("ld"), _tool("objcopy")
    include = _gcc_include_dir(gcc, target.cflags[0])
    out = Path(out)
    defines = (
        f"-DITERATIONS={iterations}u",
        f"-DSCENARIO={SCENARIOS.index(scenario)}",
    )
    with tempfile.TemporaryDirectory(prefix="dominoes-guest-") as tmp:
        work = Path(tmp)
        common = (
            gcc,
            *target.cflags,
            *_CFLAGS,
            "-isystem",
            include,
            f"-I{SOURCE_DIR}",
            *defines,
            "-c",
        )
        _run((*common, str(SOURCE_DIR / target.start), "-o", "start.o"), work)
        _run((*common, str(SOURCE_DIR / "kernel.c"), "-o", "kernel.o"), work)
        _run(
            (
                ld,
                "-m",
                target.emulation,
                "-nostdlib",
                "--no-dynamic-linker",
                "-static",
                "--build-id=none",
                "-T",
                str(SOURCE_DIR / target.script),
                "-o",
                "guest.elf",
                "start.o",
                "kernel.o",
            ),
            work,
        )
        _run((objcopy, "-O", "binary", "guest.elf", "guest.bin"), work)
        image = (work / "guest.bin").read_bytes()
    if not image:
        raise RuntimeError("building the test guest produced an empty image")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(image)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dominoes.components.vmm.guest.build",
        description="Build the x86 test guest (a flat image loaded at 0x100000).",
    )
    parser.add_argument("out", type=Path, help="where to write the flat binary")
    parser.add_argument(
        "--iterations",
        type=int,
        default=100_000,
        help="counter increments per vCPU (default 100000)",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="normal")
    parser.add_argument(
        "--arch",
        choices=ARCHES,
        default="i386",
        help="i386: start in 32-bit protected mode (default); x86_64: in long mode",
    )
    args = parser.parse_args(argv)
    try:
        path = build_guest(
            args.out, iterations=args.iterations, scenario=args.scenario, arch=args.arch
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: {path.stat().st_size} bytes ({args.scenario}, {args.arch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
