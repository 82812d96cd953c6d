"""A stand-in entry point for launch tests: writes its argv to <workdir>/argv.json and exits 3
when given --config.fail=True."""
import json
import os
import sys

if __name__ == "__main__":
    workdir = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--workdir="))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "argv.json"), "w") as f:
        json.dump({"argv": sys.argv}, f)
    sys.exit(3 if "--config.fail=True" in sys.argv else 0)
