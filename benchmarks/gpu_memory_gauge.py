"""Device check: what a worker publishes for tumorsynth_worker_gpu_memory_bytes on a real GPU (prints; not a test).

Run on a CUDA machine from the repository root: `python benchmarks/gpu_memory_gauge.py`.
"""

import json
import subprocess
import sys

sys.path.insert(0, ".")
try:
    print(
        subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.used", "--format=csv"], capture_output=True, text=True
        ).stdout
    )
except FileNotFoundError:
    print("no nvidia-smi")
try:
    import torch
except ImportError:
    print("no torch on this machine; python", sys.version)
    sys.exit(0)
from tumorsynth.workers import gpu_memory

print("torch", torch.__version__, "cuda", torch.cuda.is_available())
print("before CUDA init:", gpu_memory.sample())
x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
y = torch.randn(4096, 4096, device="cuda") @ torch.randn(4096, 4096, device="cuda")
torch.cuda.synchronize()
readings = gpu_memory.sample()
print("after allocating 256 MiB + matmul:", readings)


class DictRedis:
    """Enough of redis-py for publish/read_all (the device machine may lack a Redis server)."""

    def __init__(self):
        self.d, self.z = {}, {}

    def pipeline(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *a):
        pass

    def execute(self):
        pass

    def set(self, k, v, ex=None):
        self.d[k] = v

    def zadd(self, name, mapping):
        self.z.update(mapping)

    def zremrangebyscore(self, name, lo, hi):
        self.z = {k: v for k, v in self.z.items() if v > hi}

    def zrange(self, name, a, b):
        return [k.encode() for k in self.z]

    def mget(self, keys):
        return [self.d.get(k.decode()) for k in keys]


r = DictRedis()
gpu_memory.publish(r, "gpuhost:1", 2, readings, 10)
print(json.dumps({"|".join(k): v for k, v in gpu_memory.read_all(r).items()}))
assert readings and readings[0]["allocated"] >= 256 * 2**20 and readings[0]["reserved"] >= readings[0]["allocated"]
print("GPU CHECK OK")
