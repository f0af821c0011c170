"""A third-party Cairn runner plugin in Python: the "shell" vendor.

Plan runs `sh plan.sh` in the project root, apply runs `sh apply.sh`. Each script may write a JSON
file `.cairn/changes.json` (`[{"action": "added|changed|deleted", "address": "...", "type": "..."}]`)
to report what it would change (plan) or changed (apply).

It follows the Runner contract: a unix socket in a private 0700 directory, one handshake line on
stdout, grpc.health.v1 SERVING, logs on stderr, secrets redacted from every log line, SIGINT
then SIGKILL to the script's process group when the client cancels the stream.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc

from cairn.runner.v1 import runner_pb2, runner_pb2_grpc
from cairn.v1 import common_pb2

GRACE_SECONDS = 10
ACTIONS = {
    "added": common_pb2.CHANGE_ACTION_ADDED,
    "changed": common_pb2.CHANGE_ACTION_CHANGED,
    "deleted": common_pb2.CHANGE_ACTION_DELETED,
}


def log(msg):
    print(f"cairn-runner-shell: {msg}", file=sys.stderr, flush=True)


def redact(text, secrets):
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, "***")
    return text


class Stream:
    """Builds the log lines of one Plan or Apply stream."""

    def __init__(self, response_cls, secrets):
        self.cls = response_cls
        self.secrets = list(secrets)
        self.seq = 0
        self.phase = common_pb2.PHASE_UNSPECIFIED

    def set_phase(self, phase):
        self.phase = phase
        return self.cls(phase=runner_pb2.PhaseEvent(phase=phase))

    def line(self, stream, message):
        self.seq += 1
        return self.cls(log=common_pb2.LogLine(
            seq=self.seq, timestamp=time.time_ns(), phase=self.phase, stream=stream,
            message=redact(message, self.secrets)))


def run_script(ws, script, stream, context):
    """Yields log messages while the script runs; returns (exit code, stderr tail)."""
    cwd = os.path.join(ws.root_dir, ws.project_root)
    env = dict(os.environ)
    env.update(ws.env)
    proc = subprocess.Popen(["sh", script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True, errors="replace")

    def stop():
        # The client went away: interrupt the whole group, then kill it.
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    context.add_callback(stop)
    tail = []
    for raw in proc.stdout:
        text = raw.rstrip("\n")
        tail = (tail + [redact(text, stream.secrets)])[-20:]
        yield stream.line(common_pb2.LOG_STREAM_STDOUT, text)
    code = proc.wait()
    return code, "\n".join(tail)


def read_changes(ws, phase):
    path = os.path.join(ws.root_dir, ws.project_root, ".cairn", "changes.json")
    try:
        with open(path) as f:
            entries = json.load(f)
    except FileNotFoundError:
        return [], common_pb2.Delta()
    finally:
        if os.path.exists(path):
            os.remove(path)
    delta = common_pb2.Delta()
    changes = []
    for e in entries:
        action = ACTIONS.get(e.get("action"))
        if action is None:
            continue
        field = {common_pb2.CHANGE_ACTION_ADDED: "added_resources",
                 common_pb2.CHANGE_ACTION_CHANGED: "changed_resources",
                 common_pb2.CHANGE_ACTION_DELETED: "deleted_resources"}[action]
        setattr(delta, field, getattr(delta, field) + 1)
        address = e.get("address", "")
        changes.append(common_pb2.Change(action=action, phase=phase, entity=common_pb2.Entity(
            address=address, name=address.rsplit(".", 1)[-1], type=e.get("type", ""),
            entity_vendor="shell", entity_type="resource", data_json=json.dumps(e))))
    return changes, delta


class ShellRunner(runner_pb2_grpc.RunnerServiceServicer):
    def Describe(self, request, context):
        return runner_pb2.DescribeResponse(
            vendor="shell", version="0.1.0", vendor_version="",
            capabilities=runner_pb2.Capabilities(skip_planning=True))

    def Plan(self, request, context):
        ws = request.workspace
        stream = Stream(runner_pb2.PlanResponse, ws.secret_values)
        if request.skip_planning:
            yield runner_pb2.PlanResponse(result=runner_pb2.PlanResult(success=True, skipped=True))
            return
        yield stream.set_phase(common_pb2.PHASE_PLANNING)
        code, tail = yield from run_script(ws, "plan.sh", stream, context)
        changes, delta = read_changes(ws, common_pb2.CHANGE_PHASE_PLAN)
        yield runner_pb2.PlanResponse(result=runner_pb2.PlanResult(
            success=code == 0, error="" if code == 0 else tail, no_op=not changes,
            delta=delta, changes=changes))

    def Apply(self, request, context):
        ws = request.workspace
        stream = Stream(runner_pb2.ApplyResponse, ws.secret_values)
        if request.skip_applying:
            yield runner_pb2.ApplyResponse(result=runner_pb2.ApplyResult(success=True, skipped=True))
            return
        yield stream.set_phase(common_pb2.PHASE_APPLYING)
        code, tail = yield from run_script(ws, "apply.sh", stream, context)
        changes, delta = read_changes(ws, common_pb2.CHANGE_PHASE_APPLY)
        yield runner_pb2.ApplyResponse(result=runner_pb2.ApplyResult(
            success=code == 0, error="" if code == 0 else tail, delta=delta, changes=changes,
            outputs_json="{}"))


def health_handler():
    """grpc.health.v1.Health/Check answering SERVING, without the grpcio-health-checking package:
    HealthCheckResponse{status: SERVING} is the two protobuf bytes 0x08 0x01."""
    check = grpc.unary_unary_rpc_method_handler(
        lambda request, context: b"\x08\x01",
        request_deserializer=lambda b: b, response_serializer=lambda b: b)
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": check})


def main():
    sock_dir = tempfile.mkdtemp(prefix="cairn-plugin-")
    os.chmod(sock_dir, 0o700)
    socket_path = os.path.join(sock_dir, "plugin.sock")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    runner_pb2_grpc.add_RunnerServiceServicer_to_server(ShellRunner(), server)
    server.add_generic_rpc_handlers((health_handler(),))
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    sys.stdout.write(f"1|1|unix|{socket_path}|grpc\n")
    sys.stdout.flush()
    log(f"serving on {socket_path}")

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    def watch_stdin():
        # The host keeps stdin open while it wants us; EOF means it is gone.
        while sys.stdin.buffer.read(256):
            pass
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not done.wait(0.5):
        pass
    server.stop(grace=5).wait()
    shutil.rmtree(sock_dir, ignore_errors=True)
    log("stopped")


if __name__ == "__main__":
    main()
