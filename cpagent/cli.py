"""The `cpagent` command: run, demo, status, sim, config check."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from cpagent import __version__

EX_CONFIG = 78  # sysexits.h: systemd's RestartPreventExitStatus keeps a broken config from spinning
DEFAULT_CONFIG = Path("/etc/cpagent/cpagent.toml")
DEFAULT_SOCKET = Path("/var/lib/cpagent/control.sock")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpagent", description="Charger-side OCPP agent for Linux single-board controllers."
    )
    parser.add_argument("--version", action="version", version=f"cpagent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the agent", description="Run the agent.")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                     help=f"configuration file (default {DEFAULT_CONFIG})")
    run.add_argument("--log-level", help="override logging.level of the config")

    demo = commands.add_parser(
        "demo", help="play a charging session on mock hardware against a local CSMS",
        description="Start a local CSMS on 127.0.0.1 and the agent on mock hardware, play a "
                    "charging session and print the OCPP messages. Needs no file, no hardware.")
    demo.add_argument("--fast", action="store_true", help="shorter pauses between the steps")
    demo.add_argument("--ocpp", choices=["1.6", "2.0.1"], default="1.6",
                      help="the OCPP version the charger and the local CSMS speak (default 1.6)")

    def socket_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--socket", type=Path, help="control socket of the running agent")
        p.add_argument("--config", type=Path,
                       help="take the control socket from this configuration file")

    status = commands.add_parser("status", help="show the running agent's state",
                                 description="Show connection, connectors, sessions, queue.")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    socket_options(status)

    sim = commands.add_parser(
        "sim", help="drive the mock hardware of a running agent",
        description="Drive the mock hardware of a running agent: plug, unplug, swipe TAG, "
                    "suspend, resume, fault CODE, clear-fault, diode-fail, network up|down.")
    sim.add_argument("action", choices=["plug", "unplug", "swipe", "suspend", "resume", "fault",
                                         "clear-fault", "diode-fail", "network"])
    sim.add_argument("value", nargs="?", help="card id for swipe, fault code, up/down")
    sim.add_argument("--connector", type=int, help="connector number (default 1)")
    socket_options(sim)

    queue = commands.add_parser(
        "queue", help="the transaction messages the CSMS refused for good (dead letters)",
        description="dead-letters: list what the CSMS refused TransactionMessageAttempts "
                    "(1.6) or MessageAttemptsTransactionEvent (2.0.1) times, with the refusal; "
                    "retry: put them back in the queue, in their order, to be sent again.")
    queue.add_argument("action", choices=["dead-letters", "retry"])
    queue.add_argument("--json", action="store_true", help="machine-readable output")
    socket_options(queue)

    hw_test = commands.add_parser(
        "hw-test", help="check every configured device with the installer watching",
        description="Read the meters, toggle the contactors and check their feedback, wait for "
                    "a card, show the pilot state: one PASS/FAIL line per device, with a hint.")
    hw_test.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                         help=f"configuration file (default {DEFAULT_CONFIG})")
    hw_test.add_argument("--card-wait", type=float, default=20.0,
                         help="seconds to wait for a card (default 20)")
    hw_test.add_argument("--yes", action="store_true",
                         help="do not ask; skip steps that would switch real power")

    config = commands.add_parser("config", help="configuration tools",
                                 description="Configuration tools.")
    config_commands = config.add_subparsers(dest="config_command", required=True,
                                            metavar="SUBCOMMAND")
    check = config_commands.add_parser("check", help="validate a configuration file",
                                       description="Validate a configuration file; print each "
                                                   "error with its key, exit 1 if any.")
    check.add_argument("file", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    match args.command:
        case "run":
            return _run(args.config, args.log_level)
        case "demo":
            from cpagent.demo import main as demo_main

            return demo_main(pace=0.3 if args.fast else 1.0, version=args.ocpp)
        case "status":
            return _status(args)
        case "sim":
            return _sim(args)
        case "queue":
            return _queue(args)
        case "hw-test":
            from cpagent.hwtest import hw_test_main

            return hw_test_main(str(args.config), card_wait=args.card_wait,
                                interactive=not args.yes)
        case "config":
            from cpagent.config import check_main

            return check_main(str(args.file))
    return 2


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return args.socket
    if args.config:
        from cpagent.config import ConfigError, load_config

        try:
            return load_config(args.config).station.control_socket
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            raise SystemExit(EX_CONFIG) from None
    return Path(os.environ.get("CPAGENT_SOCKET", DEFAULT_SOCKET))


def _ask(args: argparse.Namespace, payload: dict) -> dict | None:
    from cpagent.control import request

    path = _socket(args)
    try:
        answer = request(path, payload)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"no agent is listening on {path} (is cpagent running? --socket/--config)",
              file=sys.stderr)
        return None
    except (OSError, ValueError) as exc:
        print(f"control socket {path}: {exc}", file=sys.stderr)
        return None
    if not answer.get("ok"):
        print(f"error: {answer.get('error')}", file=sys.stderr)
        return None
    return answer


def _status(args: argparse.Namespace) -> int:
    answer = _ask(args, {"cmd": "status"})
    if answer is None:
        return 1
    answer.pop("ok", None)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    link = answer["connection"]
    print(f"{answer['charge_point']} (cpagent {answer['version']})")
    print(f"  CSMS   {link['url']}  {link['state']}"
          + (f", OCPP {link['ocpp_version']}, {link['registration']}"
             if link["ocpp_version"] else "")
          + f", security profile {link.get('security_profile', '?')}")
    cert = answer.get("certificate")
    if cert:
        print(f"  cert   {cert['subject'] or '-'}, valid until {cert['valid_until'] or '-'}"
              + (", a renewed one waits for the next connection" if cert["next_on_trial"]
                 else "") + (f"; renewal: {cert['renewal']}" if cert["renewal"] else ""))
    for c in answer["connectors"]:
        line = f"  #{c['id']}     {c['status']}"
        if c["error"]:
            line += f" ({c['error']})"
        if c["energy_wh"] is not None:
            line += f"  meter {c['energy_wh'] / 1000:.3f} kWh"
        tx = c["transaction"]
        if tx:
            line += f"  session {tx['transaction_id'] or 'pending'} for {tx['id_tag']}"
            line += f", offered {c['offered_amps']:g} A (limited by {c['limited_by']})"
        print(line)
    if answer.get("charging_profiles") or answer.get("site_limit_amps"):
        site = answer.get("site_limit_amps")
        print(f"  limits {answer.get('charging_profiles', 0)} charging profile(s)"
              + (f", site limit {site:g} A shared by the connectors" if site else ""))
    queue = answer["queue"]
    print(f"  queue  {queue['durable']} transaction message(s) waiting"
          + (f", {queue['dead_letters']} refused for good (cpagent queue dead-letters)"
             if queue.get("dead_letters") else ""))
    storage = answer.get("storage") or {}
    if storage.get("disk_full"):
        print("  disk   FULL: meter samples are not kept; transaction starts are refused until "
              "space is freed in the data directory")
    if answer["last_error"]:
        print(f"  last error: {answer['last_error']}")
    return 0


def _sim(args: argparse.Namespace) -> int:
    if args.action in ("swipe", "fault", "network") and not args.value:
        print(f"sim {args.action} needs a value", file=sys.stderr)
        return 2
    answer = _ask(args, {"cmd": "sim", "action": args.action, "value": args.value,
                         "connector": args.connector})
    return 0 if answer is not None else 1


def _queue(args: argparse.Namespace) -> int:
    answer = _ask(args, {"cmd": "queue", "action": args.action})
    if answer is None:
        return 1
    answer.pop("ok", None)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    if args.action == "retry":
        print(f"{answer['requeued']} dead letter(s) put back in the queue")
        return 0
    letters = answer["dead_letters"]
    if not letters:
        print("no dead letters: the CSMS has refused nothing for good")
    for letter in letters:
        print(f"  #{letter['seq']}  {letter['failed_at']}  {letter['kind']} "
              f"({letter['protocol']}, transaction {letter['transaction']}): {letter['reason']}")
    return 0


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class StartupFailure(Exception):
    """The agent cannot start; the message names the problem and the fix."""


def _startup_problem(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or text}; run as the cpagent user or fix " \
               "the file's owner or mode"
    if isinstance(exc, FileNotFoundError):
        return f"not found: {exc.filename or text}"
    return text


def _run(config_path: Path, log_level: str | None) -> int:
    from cpagent.config import ConfigError, load_config

    if log_level is not None and log_level.upper() not in LOG_LEVELS:
        print(f"cpagent: --log-level {log_level!r} is not a log level; use one of "
              f"{', '.join(LOG_LEVELS)}", file=sys.stderr)
        return EX_CONFIG
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    # Under systemd the journal stamps each line already.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=(log_level or config.logging.level).upper(),
                        format=stamp + "%(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        outcome = asyncio.run(_serve(config))
    except StartupFailure as exc:
        print(f"cpagent: cannot start: {exc}", file=sys.stderr)
        return EX_CONFIG
    if outcome in ("soft", "hard"):
        # OCPP Reset: start afresh in place, as a reboot of the application would.
        logging.shutdown()
        # bandit B606: re-exec of this same program for an OCPP Reset, no shell
        os.execv(sys.executable, [sys.executable, "-m", "cpagent", *sys.argv[1:]])  # nosec B606
    return 0


async def _serve(config) -> str:
    from cpagent.agent import Agent

    try:
        agent = Agent(config)
    except Exception as exc:  # the store, the hardware: nothing is running yet
        raise StartupFailure(_startup_problem(exc)) from None
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def stop(signum: int) -> None:
        if agent.stopping or not agent.ready.is_set():
            task.cancel()  # a second signal, or before anything runs: no more waiting
            return
        # A clean stop: sessions end with reason Reboot, the link closes normally.
        stopping.append(loop.create_task(agent.stop(signal.Signals(signum).name)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    ready = asyncio.ensure_future(agent.ready.wait())
    await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        if task.cancelled():
            return "stopped"
        exc = task.exception()
        if exc is not None:
            raise StartupFailure(_startup_problem(exc))
    try:
        return await task
    except asyncio.CancelledError:
        return "stopped"
