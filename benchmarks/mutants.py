"""Named mutants of the promise paths, each run against the fast suite (not part of CI).

    .venv/bin/python benchmarks/mutants.py [--list] [NAME...]

Each mutant breaks one promise path with one edit: (name, file, exact original snippet,
replacement). The repository's files (tracked, and untracked ones git does not ignore) are
copied to a temporary directory, the edit is made there, and the fast suite (`-m "not
real_vllm"`, `-x`) runs there with `bawt_vllm.supervisor` and `bawt_vllm.clients` imported from
the mutated copy (checked before each run). The tests expected to kill a mutant run first; if
they all pass, the whole of their files and tests/scenarios/test_promises.py run before it is called
SURVIVED. A snippet that is not found exactly once is refused: the table must follow the code.
The unmutated copy runs every expected killer first, so a failure means the mutant, not the suite.
After each run, processes carrying this run's random environment mark (everything its tests
started) are SIGKILLed: a mutant that blinds the tree search also blinds the suite's teardown.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMISES = "tests/scenarios/test_promises.py"
P = f"{PROMISES}::"
FAULTS = "tests/runtime/test_faults_runtime.py::"
SUPERVISION = "tests/runtime/test_supervision.py::"
GPUS = "tests/runtime/test_gpus.py::"
FRAMING = "tests/serve/test_gateway_framing.py::"
UPSTREAM = "tests/serve/test_upstream_pool.py::"
FIRST_RUN_TIMEOUT_S = 120
FULL_RUN_TIMEOUT_S = 600
RUN_MARK_ENV = "BAWT_MUTANTS_RUN"
RUN_MARK = uuid.uuid4().hex  # every process a test run starts inherits it (see sweep)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    killers: tuple[str, ...]  # test node ids expected to fail under the mutant

    def files(self) -> list[str]:
        """The test files run in full before a mutant is called SURVIVED."""
        return sorted({PROMISES, *(node.split("::")[0] for node in self.killers)})


MUTANTS: tuple[Mutant, ...] = (
    # -- stopped means gone, VRAM included ------------------------------------------------------
    Mutant("stop-skips-vram-proof", "supervisor/runtime/instance.py",
           "vram = await self._prove_vram_released(process.known_members())", "vram = None",
           (P + "test_a_stop_proves_the_vram_came_back",)),
    Mutant("clean-ignores-vram", "supervisor/runtime/stops.py",
           "return not self.survivors and (self.vram is None or self.vram.proven)", "return not self.survivors",
           (P + "test_vram_still_held_after_a_stop_is_not_clean",)),
    Mutant("vram-proof-without-pids", "supervisor/runtime/instance.py",
           "pids={m.pid for m in members},", "pids=set(),",
           (P + "test_a_pid_nvml_still_lists_after_a_stop_is_not_proven",)),
    Mutant("no-vram-baseline", "supervisor/runtime/instance.py",
           "self._vram_before = self._vram_reading()", "self._vram_before = None",
           (P + "test_vram_still_held_after_a_stop_is_not_clean",
            P + "test_ps_shows_the_vram_an_instance_holds_above_its_baseline")),
    Mutant("vram-memory-check-ignored", "supervisor/runtime/vram.py",
           "memory_ok=limit is None or used_now <= limit", "memory_ok=True",
           (P + "test_vram_still_held_after_a_stop_is_not_clean",)),
    # -- ready means our own server answers -----------------------------------------------------
    Mutant("ready-on-health-alone", "supervisor/runtime/readiness.py",
           "return await self.health() == 200 and await self.lists_model()", "return await self.health() == 200",
           (P + "test_a_server_that_refuses_the_instances_key_on_v1_models_is_never_ready",)),
    Mutant("served-name-not-checked", "supervisor/runtime/readiness.py",
           'return any(item.get("id") == self.served_name for item in body.get("data", []))', "return True",
           (P + "test_a_server_that_lists_another_name_is_never_ready",)),
    Mutant("stall-counted-from-launch", "supervisor/runtime/logfiles.py",
           "        if chunk:\n            self.last_growth = time.monotonic()\n",
           "        if False:\n            pass\n",
           (P + "test_a_slow_load_that_keeps_logging_is_not_a_stall",)),
    Mutant("no-total-timeout", "supervisor/runtime/instance.py",
           "if total is not None and now - started > total:", "if False:",
           (P + "test_the_total_timeout_ends_a_load_that_keeps_logging",)),
    Mutant("port-always-ours", "supervisor/runtime/instance.py",
           "        listeners = port_listeners(self.placement.port, [m.pid for m in members])\n",
           "        return True\n",
           (FAULTS + "test_a_foreign_server_on_our_port_during_the_load_is_never_called_ready",)),
    # -- restarts -------------------------------------------------------------------------------
    Mutant("no-backoff-sleep", "supervisor/runtime/instance.py",
           "        await asyncio.sleep(delay)\n", "        pass\n",
           (P + "test_a_restart_waits_its_backoff",)),
    Mutant("backoff-not-exponential", "supervisor/runtime/instance.py",
           "self.settings.restart_backoff_s * (2 ** self.restarts)", "self.settings.restart_backoff_s",
           (P + "test_backoff_doubles_up_to_its_cap",)),
    Mutant("no-restart-forgiveness", "supervisor/runtime/instance.py",
           "RESTART_FORGIVE_AFTER_S:\n                    self.restarts = 0\n",
           "RESTART_FORGIVE_AFTER_S:\n                    pass\n",
           (P + "test_restarts_are_forgiven_after_a_long_ready_life",)),
    Mutant("first-failed-start-retried", "supervisor/runtime/instance.py",
           "if first_start or self._shutdown_coming or self.restarts >= self.settings.max_restarts:",
           "if self._shutdown_coming or self.restarts >= self.settings.max_restarts:",
           (P + "test_a_first_start_that_fails_is_not_retried",)),
    Mutant("restart-after-one-failed-check", "supervisor/runtime/instance.py",
           "if failed_checks >= UNHEALTHY_CHECKS_BEFORE_RESTART:", "if failed_checks >= 1:",
           (P + "test_one_failed_health_check_is_a_blip_not_a_restart",)),
    Mutant("never-ready-after-a-blip", "supervisor/runtime/instance.py",
           'self._enter(EventKind.RECOVERED, "healthy again")', "pass",
           (P + "test_one_failed_health_check_is_a_blip_not_a_restart",)),
    # -- a hung engine ---------------------------------------------------------------------------
    Mutant("busy-hang-never-reported", "supervisor/runtime/readiness.py",
           'return f"engine hung: {load.busy:.0f} request(s) held and no progress for {stuck:.1f}s"',
           "return None",
           (P + "test_a_busy_engine_that_stops_progressing_is_hung",)),
    Mutant("idle-probe-never-due", "supervisor/runtime/readiness.py",
           "        if now - self._probed_at < self.idle_probe_every_s:\n            return False\n",
           "        return False\n",
           (SUPERVISION + "test_hung_engine_is_caught_by_the_token_probe",)),
    # -- the gateway -----------------------------------------------------------------------------
    Mutant("no-served-name-rewrite", "supervisor/serve/proxy.py",
           "body = self._with_served_name(alias, model, payload, request.body)", "body = request.body",
           (P + "test_the_gateway_sends_the_served_name_upstream",)),
    Mutant("served-name-lookup-removed", "supervisor/config/schema.py",
           "served = next((alias for alias, entry in self.models.items() if entry.served_name == name), None)",
           "served = None",
           (P + "test_the_gateway_routes_a_request_naming_the_served_name",)),
    Mutant("ready-stream-buffered", "supervisor/serve/upstream.py",
           "        if mode is Mode.RAW:\n            if self.pending:",
           "        if mode is Mode.RAW and not self.complete:\n            self.pending += data\n"
           "        elif mode is Mode.RAW:\n            if self.pending:",
           (P + "test_a_ready_models_stream_is_relayed_chunk_by_chunk",)),
    Mutant("instance-key-not-forwarded", "supervisor/serve/proxy.py",
           'headers.append((b"authorization", b"Bearer " + instance.api_key.encode()))', "pass",
           (P + "test_the_gateway_forwards_the_instances_own_key_not_the_clients",)),
    Mutant("no-503-while-shutting-down", "supervisor/serve/proxy.py",
           "if self._shutting_down():\n            return openai_error(out, 503",
           "if False:\n            return openai_error(out, 503",
           (P + "test_the_gateway_answers_503_while_shutting_down_and_starts_nothing",)),
    Mutant("upstream-failure-not-502", "supervisor/serve/proxy.py",
           'return self._fail(out, alias, sink.early, 502, message, "upstream_error")', "raise",
           (P + "test_an_upstream_that_drops_the_connection_is_a_502",)),
    Mutant("slow-client-not-held-back", "supervisor/serve/front.py",
           "self._linked = upstream\n        if self._client_paused:", "self._linked = None\n        if False:",
           (FRAMING + "test_a_response_larger_than_every_buffer_arrives_whole_at_the_clients_pace",)),
    Mutant("closed-gateway-keeps-connections", "supervisor/serve/front.py",
           "        for connection in list(self.connections):\n            connection.abort()",
           "        for connection in list(self.connections):\n            pass",
           (FRAMING + "test_closing_the_gateway_ends_its_connections_and_the_requests_in_them",)),
    Mutant("begun-response-sent-twice", "supervisor/serve/upstream.py",
           "if error.started or fresh:", "if fresh:",
           (UPSTREAM + "test_a_response_cut_off_after_it_began_is_not_sent_again",)),
    # -- the pool --------------------------------------------------------------------------------
    Mutant("eviction-does-not-wait", "supervisor/runtime/pool.py",
           "if not evictable_later(self._occupants(), entry.alias) or not await self._wait_for_idle(deadline):",
           "if True:",
           (P + "test_eviction_waits_for_a_busy_model_to_finish",)),
    Mutant("closing-flag-ignored", "supervisor/runtime/pool.py",
           "        if self._closing:\n            raise PoolClosed(",
           "        if False:\n            raise PoolClosed(",
           (P + "test_nothing_starts_after_close",
            FAULTS + "test_shutdown_while_a_load_waits_for_capacity_starts_nothing")),
    Mutant("api-key-not-recorded", "supervisor/runtime/pool.py",
           "token=process.token, api_key=instance.api_key,", "token=process.token, api_key=None,",
           (P + "test_the_state_record_keeps_the_instances_key_for_its_owner_only",
            FAULTS + "test_a_survivor_with_its_own_api_key_is_adopted")),
    # -- backends are ours alone -----------------------------------------------------------------
    Mutant("instance-key-constant", "supervisor/runtime/instance.py",
           "self.api_key = api_key or secrets.token_urlsafe(24)", 'self.api_key = api_key or "bawt-vllm-key"',
           (P + "test_every_instance_gets_its_own_random_key_in_the_environment",)),
    Mutant("instance-key-none", "supervisor/runtime/instance.py",
           "self.api_key = api_key or secrets.token_urlsafe(24)", "self.api_key = api_key",
           (P + "test_every_instance_gets_its_own_random_key_in_the_environment",)),
    # -- process trees: signal only what is proven ours, end all of it -----------------------------
    Mutant("sigterm-to-root-only", "supervisor/runtime/process.py",
           "self._signal_group(signal.SIGTERM, members)", "_signal(self.root, signal.SIGTERM)",
           (P + "test_sigterm_goes_to_the_whole_group",)),
    Mutant("no-session-scan", "supervisor/runtime/process.py",
           "candidates |= {pid for pid, row in table.items() if _shares(row, self.pgid, self.sid)}", "pass",
           (P + "test_an_orphan_left_in_the_group_without_the_token_is_found_and_stopped",)),
    Mutant("no-token-scan", "supervisor/runtime/process.py",
           "candidates |= {pid for pid in pool if carries_token(pid, self.token)}", "pass",
           (FAULTS + "test_an_escapee_made_after_ready_is_found_and_stopped_and_counted",)),
    Mutant("no-reaping", "supervisor/runtime/process.py",
           '"""Collect exit statuses so no member lingers as a zombie of ours."""\n',
           '"""Collect exit statuses so no member lingers as a zombie of ours."""\n        return\n',
           (P + "test_a_stop_reaps_the_root_and_orphans_re_parented_to_the_supervisor",)),
    Mutant("no-sigkill-after-grace", "supervisor/runtime/process.py",
           "            self._signal_group(signal.SIGKILL, leftovers)\n            for member in leftovers:\n"
           "                _signal(member, signal.SIGKILL)\n",
           "            pass\n",
           (SUPERVISION + "test_ignores_sigterm_is_killed_after_grace",)),
    Mutant("group-or-session-always-proven", "supervisor/runtime/process.py",
           "if any(_shares(table.get(pid, _NOWHERE), self.pgid, self.sid) for pid in proven):",
           "if True:",
           (FAULTS + "test_a_stale_tree_is_not_killed_through_the_strangers_group_or_session",)),
    Mutant("signal-group-unchecked", "supervisor/runtime/process.py",
           "        if not any(_in_group(m.pid, self.pgid) for m in members):\n            return\n",
           "",
           (FAULTS + "test_a_stale_tree_is_not_killed_through_the_strangers_group_or_session",)),
    # -- state records ---------------------------------------------------------------------------
    Mutant("record-types-unchecked", "supervisor/runtime/statefile.py",
           "            if not _has_type(value, _FIELD_TYPES[name]):\n"
           "                raise ValueError(f\"field {name!r} has the wrong type\")\n",
           "            pass\n",
           (P + "test_a_record_with_a_wrong_field_type_is_set_aside",)),
)


class TableError(RuntimeError):
    """The table no longer matches the code (a snippet missing or ambiguous, a duplicate name)."""


@dataclass(frozen=True)
class Outcome:
    killed: bool
    detail: str  # the failing test, or why it counts as killed, or the survivor's note
    seconds: float


def mutated_text(mutant: Mutant, root: Path) -> str:
    """The file's text with the mutant applied; TableError unless the snippet occurs exactly once."""
    text = (root / mutant.path).read_text()
    count = text.count(mutant.original)
    if count != 1:
        raise TableError(f"{mutant.name}: the snippet occurs {count} times in {mutant.path} (must be exactly once); "
                         f"re-read the file and update the table:\n{mutant.original}")
    return text.replace(mutant.original, mutant.replacement)


def check_table(mutants: Sequence[Mutant]) -> None:
    names = [m.name for m in mutants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TableError(f"duplicate mutant names: {', '.join(duplicates)}")
    problems = []
    for mutant in mutants:
        try:
            mutated_text(mutant, ROOT)
        except (TableError, OSError) as error:
            problems.append(str(error))
    if problems:
        raise TableError("\n\n".join(problems))


def repo_files() -> list[str]:
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             check=True, capture_output=True).stdout.decode()
    return [name for name in listing.split("\0") if name and (ROOT / name).is_file()]


def copy_repo(target: Path, files: Sequence[str]) -> None:
    for name in files:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination)


def package_dir(copy: Path) -> Path:
    """A `bawt_vllm` package whose supervisor and clients are the copy's (first on PYTHONPATH)."""
    package = copy / ".mutant_pkg" / "bawt_vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for part in ("supervisor", "clients"):
        (package / part).symlink_to(copy / part, target_is_directory=True)
    return package.parent


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / ".mutant_pkg"), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env[RUN_MARK_ENV] = RUN_MARK
    return env


def sweep() -> int:
    """SIGKILL what a mutated run left behind (a mutant may blind the suite's own teardown): only
    processes whose environment carries this run's random mark, so only what this script started."""
    mark = f"{RUN_MARK_ENV}={RUN_MARK}".encode()
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            carries = mark in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if carries:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


def module_name(path: str) -> str:
    """supervisor/runtime/instance.py -> bawt_vllm.supervisor.runtime.instance."""
    return "bawt_vllm." + path.removesuffix(".py").replace("/", ".")


def check_imported(copy: Path, path: str, expected: str | None) -> None:
    """Import the module of path as the tests will, and make sure it is the copy's file, holding
    exactly the expected text (the mutated one)."""
    code = f"import {module_name(path)} as m, os; print(os.path.realpath(m.__file__))"
    found = subprocess.run([sys.executable, "-c", code], cwd=copy, env=environment(copy), capture_output=True,
                           text=True, timeout=60)
    imported = found.stdout.strip()
    wanted = os.path.realpath(copy / path)
    if found.returncode != 0 or imported != wanted:
        raise RuntimeError(f"the tests would import {imported or found.stderr.strip()} instead of {wanted}")
    if expected is not None and Path(imported).read_text() != expected:
        raise RuntimeError(f"{imported} does not hold the mutation")


_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def run_pytest(copy: Path, targets: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """(exit code or None on timeout, output) of the fast suite on targets, in copy."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not real_vllm", *targets]
    process = subprocess.Popen(command, cwd=copy, env=environment(copy), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        stop_run(process)
        output, _ = process.communicate()
        return None, output
    finally:
        if left := sweep():
            print(f"  (swept {left} process(es) the run left behind)", flush=True)


def stop_run(process: subprocess.Popen[str]) -> None:
    """Interrupt a pytest run we started (its teardown kills what it started), then kill its group."""
    with_signal(process.pid, signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with_signal(process.pid, signal.SIGKILL)


def with_signal(group: int, sig: int) -> None:
    """Signal the process group of a pytest run this script started (its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def verdict(code: int | None, output: str) -> Outcome | None:
    """Killed (with the failing test), or None when every test passed."""
    if code == 0:
        return None
    if code is None:
        return Outcome(True, f"timed out (the suite hangs): {last_line(output)}", 0.0)
    failed = _FAILED.findall(output)
    if code == 1 and failed:
        return Outcome(True, failed[0], 0.0)
    return Outcome(True, f"pytest exit {code}: {last_line(output)}", 0.0)


def last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def try_mutant(mutant: Mutant, base: Path, work: Path) -> Outcome:
    started = time.monotonic()
    copy = work / mutant.name
    shutil.copytree(base, copy, symlinks=True)
    mutated = mutated_text(mutant, base)
    (copy / mutant.path).write_text(mutated)
    package_dir(copy)
    check_imported(copy, mutant.path, mutated)
    try:
        for targets, timeout in ((list(mutant.killers), FIRST_RUN_TIMEOUT_S), (mutant.files(), FULL_RUN_TIMEOUT_S)):
            code, output = run_pytest(copy, targets, timeout)
            outcome = verdict(code, output)
            if outcome is not None:
                return Outcome(True, outcome.detail, time.monotonic() - started)
        return Outcome(False, "every test passed", time.monotonic() - started)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def baseline(mutants: Sequence[Mutant], base: Path) -> float:
    """Run every expected killer on the unmutated copy; they must pass."""
    started = time.monotonic()
    package_dir(base)
    check_imported(base, "supervisor/runtime/instance.py", None)
    killers = sorted({node for mutant in mutants for node in mutant.killers})
    code, output = run_pytest(base, killers, FULL_RUN_TIMEOUT_S)
    if code != 0:
        raise SystemExit(f"the unmutated code fails its own tests; fix that first:\n{output[-4000:]}")
    shutil.rmtree(base / ".mutant_pkg")
    return time.monotonic() - started


def select(names: Sequence[str]) -> list[Mutant]:
    by_name = {m.name: m for m in MUTANTS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown mutant(s): {', '.join(unknown)}; --list shows them")
    return [by_name[n] for n in names] if names else list(MUTANTS)


def print_list(mutants: Sequence[Mutant]) -> None:
    width = max(len(m.name) for m in mutants)
    for mutant in mutants:
        print(f"{mutant.name:<{width}}  {mutant.path:<26}  {', '.join(k.split('::')[1] for k in mutant.killers)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the mutants (and check the table) and exit")
    parser.add_argument("names", nargs="*", metavar="NAME", help="run only these mutants")
    args = parser.parse_args(argv)
    mutants = select(args.names)
    try:
        check_table(MUTANTS)
    except TableError as error:
        print(f"mutants.py: the table does not match the code:\n{error}", file=sys.stderr)
        return 2
    if args.list:
        print_list(mutants)
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bawt-mutants-") as temporary:
        work = Path(temporary)
        base = work / "base"
        copy_repo(base, repo_files())
        print(f"baseline: {len(mutants)} mutant(s)' expected killers pass unmutated "
              f"({baseline(mutants, base):.1f}s)", flush=True)
        width = max(len(m.name) for m in mutants)
        killed = 0
        for mutant in mutants:
            outcome = try_mutant(mutant, base, work)
            killed += outcome.killed
            word = "killed" if outcome.killed else "SURVIVED"
            print(f"{mutant.name:<{width}}  {word:<8}  {outcome.detail}  ({outcome.seconds:.1f}s)", flush=True)
    print(f"{len(mutants)} mutants, {killed} killed ({time.monotonic() - started:.0f}s)")
    return 0 if killed == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
