"""C-to-Python call-heavy worst case: list(map(pyfunc, range(N))) and sorted(key=lambda).

Prints the elapsed seconds of the measured part on stdout."""
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000


def pyfunc(x):
    return x + 1


t0 = time.perf_counter()
list(map(pyfunc, range(N)))
sorted(range(N // 4), key=lambda x: -x)
print(f"{time.perf_counter() - t0:.4f}")
