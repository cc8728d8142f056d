"""Small official-checkpoint files that declare huge allocations are refused before anything is
allocated: each is read in a fresh process whose peak memory growth is measured (and whose address
space is capped, so that a regression fails there instead of exhausting the machine)."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import zipfile

import pytest
import torch

READ = r"""
import json, resource, sys
from dema_lab.models.official import read_official, official_state_dict
import torch  # everything imported before the baseline
with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
results = {}
for path in sys.argv[1:]:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        official_state_dict(read_official(path))
        out = {"error": None}
    except BaseException as e:
        out = {"error": type(e).__name__, "message": str(e)}
    out["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    results[path] = out
print(json.dumps(results))
"""


class _Bytearray:
    """Pickles as bytearray(3_000_000_000): a constructor that allocates by a count from the file."""

    def __reduce__(self):
        return (bytearray, (3_000_000_000,))


def _declare_storage(data: bytes, size_opcode: bytes, numel: int) -> bytes:
    """`data` with the storage size after the 'cpu' location (`size_opcode`, e.g. BININT1 1)
    replaced by `numel` (BININT)."""
    old = b"cpuq\x08" + size_opcode
    assert data.count(old) == 1
    return data.replace(old, b"cpuq\x08J" + struct.pack("<i", numel))


def _hostile_files(folder) -> dict:
    """name -> path of each hostile file (all a few hundred bytes to 2 KB)."""
    files = {}

    def put(name, data):
        files[name] = folder / f"{name}.pkl"
        files[name].write_bytes(data)

    put("bytearray", pickle.dumps(_Bytearray(), protocol=2))  # 41 bytes
    put("bytes", b"\x80\x02c__builtin__\nbytes\nJ\x00\x5e\xd0\xb2\x85R.")  # bytes(3_000_000_000)
    huge = torch.zeros(1).expand(40000, 40000)  # 6.4 GB once cloned, one float in the file
    put("expand-pickle.dump", pickle.dumps({"model": {"w": huge}}))
    for how, zip_format in (("torch.save", True), ("legacy torch.save", False)):
        torch.save({"model": {"w": huge}}, folder / "tmp.pkl", _use_new_zipfile_serialization=zip_format)
        put(f"expand-{how}", (folder / "tmp.pkl").read_bytes())
    # storages that declare 1e9 floats over a 4-byte record: legacy (torch allocates the declared
    # size before reading) and zip
    torch.save({"model": {"w": torch.zeros(1)}}, folder / "tmp.pkl", _use_new_zipfile_serialization=False)
    put("storage-legacy", _declare_storage((folder / "tmp.pkl").read_bytes(), b"K\x01", 10**9))
    torch.save({"model": {"w": torch.zeros(1000)}}, folder / "tmp.pkl")
    for name, mode in (("storage-zip", zipfile.ZIP_STORED), ("compressed", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(folder / "tmp.pkl") as z, zipfile.ZipFile(folder / f"{name}.pkl", "w", mode) as out:
            for info in z.infolist():
                data = z.read(info.filename)
                if name == "storage-zip" and info.filename.endswith("data.pkl"):
                    data = _declare_storage(data, b"M\xe8\x03", 10**9)
                out.writestr(info.filename, data)
        files[name] = folder / f"{name}.pkl"
    return files


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """name -> {error, message, growth_mb}: every hostile file read in one fresh process."""
    files = _hostile_files(tmp_path_factory.mktemp("bombs"))
    done = subprocess.run(
        [sys.executable, "-c", READ, *map(str, files.values())], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: results[str(path)] for name, path in files.items()}


def test_a_41_byte_pickle_calling_bytearray_of_3e9_is_refused_without_allocating(refused):
    for name in ("bytearray", "bytes"):
        got = refused[name]
        assert got["error"] == "UnsafeCheckpointError", got
        assert f"calls {name}(int): a constructor that allocates by a size from the file" in got["message"]
        assert got["growth_mb"] < 200  # unchecked: 2.9 GB


@pytest.mark.parametrize("how", ["torch.save", "legacy torch.save", "pickle.dump"])
def test_an_expanded_stride0_tensor_is_refused_by_its_declared_shape(refused, how):
    got = refused[f"expand-{how}"]
    assert got["error"] == "UnsafeCheckpointError", got
    assert "a tensor of shape (40000, 40000) (1,600,000,000 elements) over a storage of 1 elements" in got["message"]
    assert "expanded (stride-0) or overlapping view" in got["message"]
    assert got["growth_mb"] < 200  # unchecked: 6.1 GB


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_a_storage_declaring_more_than_the_file_holds_is_refused(refused, fmt):
    got = refused[f"storage-{fmt}"]
    assert got["error"] == "UnsafeCheckpointError", got
    assert "declares storages of 4,000,000,000 bytes in a file of" in got["message"]
    assert got["growth_mb"] < 200


def test_a_compressed_record_is_refused_before_it_is_unpacked(refused):
    got = refused["compressed"]
    assert got["error"] == "UnsafeCheckpointError" and "holds a compressed record" in got["message"], got


def test_plain_bytes_and_bytearrays_still_read():
    import io

    from dema_lab.models.official.unpickler import restricted_torch_load

    value = {"a": b"\x00\xffab", "b": bytearray(b"xy"), "c": b""}
    assert restricted_torch_load(io.BytesIO(pickle.dumps(value, protocol=2)), "test") == value


def test_tensors_sharing_a_storage_within_the_file_still_read(tmp_path):
    from dema_lab.models.official import read_official

    w = torch.arange(12.0).reshape(3, 4)
    path = tmp_path / "tied.pkl"
    torch.save({"model": {"w": w, "tied": w, "row": w[1]}}, path)
    sd = read_official(path)["model"]
    assert torch.equal(sd["tied"], w) and torch.equal(sd["row"], w[1])


def test_numpy_arrays_read_and_object_arrays_are_refused(tmp_path):
    import io

    import numpy as np

    from dema_lab.models.official.unpickler import UnsafeCheckpointError, restricted_torch_load

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = restricted_torch_load(io.BytesIO(pickle.dumps({"a": a})), "test")["a"]
    np.testing.assert_array_equal(got, a)
    with pytest.raises(UnsafeCheckpointError, match="a numpy array of objects"):
        restricted_torch_load(io.BytesIO(pickle.dumps(np.array([1, "x"], dtype=object))), "test")
