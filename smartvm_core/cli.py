"""The ``smartvm`` command: ``run``, ``plugins`` and ``info``.

Exit status of ``smartvm run``: the guest's exit code when the guest asked
to stop with one (isa-debug-exit, the exit hypercall, DOS INT 21h/4Ch); 0
when it stopped on the marker, the exit limit or a HLT nothing can wake; 1
when the VM failed (unhandled exit, triple fault, engine error); 2 for a
user error (bad experiment, image or flag); 124 when the wall-time limit hit.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import SmartVMError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124


def _prescan_plugins(argv: Sequence[str]) -> tuple[list[str], list[str], Path | None]:
    """Find ``-p`` options and the experiment file before the real parse."""
    disable, load = [], []
    target = None
    it = iter(range(len(argv)))
    skip_next = {"--engine", "--mem", "--vcpus", "--device", "--kernel", "--initrd", "--append", "--format",
                 "--max-exits", "--timeout", "--marker", "--report", "--report-file", "--console", "--snapshot"}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-p" and i + 1 < len(argv):
            val = argv[i + 1]
            (disable if val.startswith("no:") else load).append(val[3:] if val.startswith("no:") else val)
            i += 2
            continue
        if a.startswith("-p") and len(a) > 2:
            val = a[2:]
            (disable if val.startswith("no:") else load).append(val[3:] if val.startswith("no:") else val)
        elif a in skip_next:
            i += 2
            continue
        elif not a.startswith("-") and target is None and a.endswith(".toml"):
            target = Path(a)
        i += 1
    del it
    return disable, load, target


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, sized to the terminal without :mod:`shutil`.

    argparse builds a formatter on every ``add_argument`` and the default one
    imports :mod:`shutil` (and zlib, bz2, lzma with it) to ask for the
    terminal width: a cost on every ``smartvm run`` that never prints help.
    The width comes from the same places: ``COLUMNS``, then the terminal of
    standard output, else 80 columns.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smartvm run", description="Build a machine and run a guest.",
                                formatter_class=_HelpFormatter)
    p.add_argument("target", nargs="?", help="an experiment file (.toml) or a guest image")
    p.add_argument("--engine", help="auto, soft, kvm, ... (default: from the experiment, else auto)")
    p.add_argument("--mem", help="guest RAM, e.g. 64M")
    p.add_argument("--vcpus", type=int, help="number of vCPUs")
    p.add_argument("--device", action="append", default=[], metavar="TYPE[,key=value...]",
                   help="add a device or a device set (repeatable), e.g. --device pc --device uart,port=0x2f8")
    p.add_argument("-p", dest="plugins", action="append", default=[], metavar="[no:]NAME",
                   help="-p no:NAME leaves a plugin out; -p MODULE loads an extra plugin module")
    p.add_argument("--kernel", help="kernel image (multiboot, ELF, bzImage), as in QEMU")
    p.add_argument("--initrd", help="initial ramdisk for --kernel")
    p.add_argument("--append", default="", help="kernel command line for --kernel")
    p.add_argument("--format", help="image format of TARGET (default: detected)")
    p.add_argument("--max-exits", type=int, help="stop after this many VM exits")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--marker", help="stop when the console prints this string")
    p.add_argument("--report", choices=("text", "json", "none"), help="end-of-run report format")
    p.add_argument("--report-file", help="write the report here instead of stderr")
    p.add_argument("--console", help="guest console output: stdout, none or file:PATH")
    p.add_argument("--trace-hooks", action="store_true", help="print every hook call to stderr")
    return p


def _device_override(spec: str) -> dict[str, Any]:
    parts = [s for s in spec.split(",") if s]
    if not parts:
        raise SmartVMError("<command line>: --device: empty device specification")
    out: dict[str, Any] = {"type": parts[0]}
    for kv in parts[1:]:
        key, eq, value = kv.partition("=")
        if not eq:
            raise SmartVMError(f"<command line>: --device {spec}: {kv!r} is not key=value")
        out[key] = value
    return out


def _overrides(args: argparse.Namespace, image_target: str | None) -> dict[str, Any]:
    o: dict[str, Any] = {"machine": {}, "stop": {}, "report": {}, "console": {}}
    if args.engine:
        o["machine"]["engine"] = args.engine
    if args.mem:
        o["machine"]["memory"] = args.mem
    if args.vcpus is not None:
        o["machine"]["vcpus"] = args.vcpus
    if args.max_exits is not None:
        o["stop"]["max_exits"] = args.max_exits
    if args.timeout is not None:
        o["stop"]["timeout"] = args.timeout
    if args.marker:
        o["stop"]["marker"] = args.marker
    if args.report:
        o["report"]["format"] = args.report
    if args.report_file:
        o["report"]["file"] = args.report_file
    if args.console:
        o["console"]["output"] = args.console
    o["device"] = [_device_override(d) for d in args.device]
    images = []
    if image_target:
        im: dict[str, Any] = {"path": str(Path(image_target).resolve())}
        if args.format:
            im["format"] = args.format
        images.append(im)
    if args.kernel:
        im = {"path": str(Path(args.kernel).resolve()), "cmdline": args.append}
        if args.initrd:
            im["initrd"] = str(Path(args.initrd).resolve())
        images.append(im)
    o["image"] = images
    return {k: v for k, v in o.items() if v}


def cmd_run(argv: Sequence[str]) -> int:
    # Start-up makes many long-lived objects (modules, classes, the machine) and
    # next to no garbage: collecting while they are made only scans them again
    # and again (about a tenth of start-up). Collect nothing until the machine
    # is built, then freeze what exists so that the collector never rescans it
    # while the guest runs (the pattern the gc.freeze documentation describes).
    gc.disable()
    try:
        return _run(argv)
    finally:
        gc.enable()


def _run(argv: Sequence[str]) -> int:
    from .builder import build_machine, load_experiment
    from .plugins import get_plugin_manager
    from .report import build_run_report

    disable, load, toml_path = _prescan_plugins(argv)
    extra_disable: list[str] = []
    extra_load: list[str] = []
    if toml_path is not None and toml_path.is_file():
        from .config import read_plugin_lists
        extra_disable, extra_load = read_plugin_lists(toml_path)
    trace = (lambda line: print(f"[smartvm] {line}", file=sys.stderr)) if "--trace-hooks" in argv else None
    pm = get_plugin_manager(disable=[*disable, *extra_disable], load=[*load, *extra_load],
                            base_dir=toml_path.resolve().parent if toml_path else Path.cwd(),
                            source=str(toml_path) if toml_path else "<command line>", trace=trace)
    parser = _run_parser()
    pm.hook.add_cli_options.call_historic(kwargs={"parser": parser})
    args = parser.parse_args(argv)
    path, image = None, None
    if args.target:
        if args.target.endswith(".toml"):
            path = Path(args.target)
        else:
            image = args.target
            if not Path(image).is_file():
                raise SmartVMError(f"<command line>: image {image}: no such file")
    if path is None and image is None and not args.kernel:
        parser.error("give an experiment file, an image, or --kernel")
    experiment = load_experiment(pm, path, _overrides(args, image), cli_options=vars(args))
    machine = build_machine(pm, experiment)
    gc.freeze()
    gc.enable()
    try:
        reason = machine.run()
        report = build_run_report(machine)
    finally:
        machine.close()
    _emit_report(report, experiment.report_format, experiment.report_file)
    if reason.kind == "exit-code":
        return int(reason.exit_code or 0) & 0xFF
    if reason.kind == "timeout":
        return EXIT_TIMEOUT
    return EXIT_FAILED if reason.failed else 0


def _emit_report(report: Any, fmt: str, file: str) -> None:
    if fmt == "none":
        return
    text = report.to_json() if fmt == "json" else report.to_text()
    if file:
        Path(file).write_text(text + "\n")
    else:
        sys.stdout.flush()
        print(text, file=sys.stderr)


def cmd_plugins(argv: Sequence[str]) -> int:
    from .plugins import blocked_names, get_plugin_manager, get_plugins
    p = argparse.ArgumentParser(prog="smartvm plugins", description="List installed plugins and their hooks.")
    p.add_argument("-p", dest="plugins", action="append", default=[], metavar="no:NAME")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    disable = [x[3:] for x in args.plugins if x.startswith("no:")]
    load = [x for x in args.plugins if not x.startswith("no:")]
    pm = get_plugin_manager(disable=disable, load=load)
    plugins = get_plugins(pm)
    blocked = blocked_names(pm)
    if args.json:
        import json
        print(json.dumps({"plugins": plugins, "disabled": blocked}, indent=2))
        return 0
    for info in plugins:
        dist = f"{info['distribution']} {info['version']}".strip() or "(not from a distribution)"
        flag = " [essential]" if info["essential"] else ""
        print(f"{info['name']}: {dist}{flag}")
        print(f"    hooks: {', '.join(info['hooks']) or '-'}")
    if blocked:
        print(f"disabled: {', '.join(blocked)}")
    return 0


def cmd_info(argv: Sequence[str]) -> int:
    from .builder import probe_engines, registered_engines
    from .plugins import get_plugin_manager
    p = argparse.ArgumentParser(prog="smartvm info", description="What this host can run.")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    pm = get_plugin_manager()
    engines = registered_engines(pm)
    available = probe_engines(engines)
    from .config import Experiment
    auto = pm.hook.select_engine(experiment=Experiment(), available=available)
    data = {"smartvm": __version__, "python": sys.version.split()[0], "auto": auto, "engines": {}}
    for name, cls in engines.items():
        a = available[name]
        details = {**a.details, **(cls.host_details() if a.usable else {})}
        data["engines"][name] = {"usable": a.usable, "accelerated": a.accelerated, "reason": a.reason,
                                 "description": cls.description, "details": details,
                                 "capabilities": cls.capability_table()}
    if args.json:
        import json
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"smartvm {__version__} on Python {data['python']}")
    print(f"engine 'auto' picks: {auto or 'nothing (no usable engine)'}")
    for name, e in data["engines"].items():
        state = "usable" if e["usable"] else "not usable"
        if e["usable"] and e["accelerated"]:
            state += ", hardware-accelerated"
        print(f"\n[{name}] {e['description']}")
        print(f"  {state}{': ' + e['reason'] if e['reason'] else ''}")
        for k, v in e["details"].items():
            print(f"  {k}: {v}")
        if e["capabilities"]:
            print("  VMX mechanisms:")
            for k, v in e["capabilities"].items():
                print(f"    {k:<36} {v}")
    return 0


COMMANDS = {"run": cmd_run, "plugins": cmd_plugins, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: smartvm {run,plugins,info} ...\n\n"
              "  run      build a machine from an experiment file or an image and run it\n"
              "  plugins  list installed plugins, their distributions and hooks\n"
              "  info     which engines this host can use, and why not\n")
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        print(f"smartvm {__version__}")
        return 0
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        print(f"smartvm: unknown command {argv[0]!r} (run, plugins, info)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return cmd(argv[1:])
    except SmartVMError as e:
        print(f"smartvm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
