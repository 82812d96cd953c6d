"""A stand-in entry point for launch tests: writes its argv to <workdir>/argv.json and exits 3
when given --config.fail=True. With ECHO_JOB_SLEEP=S it then sleeps S seconds; a Ctrl-C or
SIGTERM meanwhile writes the signal's name to <workdir>/stopped_by, waits ECHO_JOB_SAVE_SECONDS
(a training loop saving its checkpoint) and exits 128 + the signal number, as a run does."""
import json
import os
import signal
import sys
import time

if __name__ == "__main__":
    workdir = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--workdir="))
    os.makedirs(workdir, exist_ok=True)

    def stop(signum, frame):
        with open(os.path.join(workdir, "stopped_by"), "w") as f:
            f.write(signal.Signals(signum).name)
        time.sleep(float(os.environ.get("ECHO_JOB_SAVE_SECONDS", "0")))
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with open(os.path.join(workdir, "argv.json"), "w") as f:
        json.dump({"argv": sys.argv}, f)
    time.sleep(float(os.environ.get("ECHO_JOB_SLEEP", "0")))
    sys.exit(3 if "--config.fail=True" in sys.argv else 0)
