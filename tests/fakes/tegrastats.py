"""A FAKE tegrastats for tests off a Jetson: prints one real captured line (from $FAKE_TEGRASTATS_LINE)
every `--interval N` milliseconds until terminated, the way tegrastats does."""

import os
import sys
import time

args = sys.argv[1:]
interval = int(args[args.index("--interval") + 1]) if "--interval" in args else 1000
line = os.environ["FAKE_TEGRASTATS_LINE"]
while True:
    print(line, flush=True)
    time.sleep(interval / 1000)
