#!/usr/bin/env python3
"""An independent safetensors reader and writer for glia's tests (stdlib only).

read PATH            prints one line per tensor: name dtype shape sum-of-values
write PATH           writes a file with F32, I64, BOOL, F16 and BF16 tensors and metadata
"""
import json
import struct
import sys

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
FMT = {"F64": "d", "F32": "f", "I64": "q", "I32": "i", "U8": "B", "BOOL": "?"}


def values(dtype, raw):
    if dtype == "F16":
        return list(struct.unpack("<%de" % (len(raw) // 2), raw))
    if dtype == "BF16":
        return [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
    return list(struct.unpack("<%d%s" % (len(raw) // SIZES[dtype], FMT[dtype]), raw))


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    for k in sorted(meta):
        print("meta %s %s" % (k, meta[k]))
    for name in sorted(header):
        e = header[name]
        b, end = e["data_offsets"]
        vals = values(e["dtype"], data[b:end])
        print("%s %s %s %g" % (name, e["dtype"], ",".join(map(str, e["shape"])), sum(float(v) for v in vals)))


def write(path):
    tensors = [
        ("a", "F32", [2, 3], struct.pack("<6f", 1, 2, 3, 4, 5, 6.5)),
        ("b", "I64", [3], struct.pack("<3q", -1, 0, 2 ** 40)),
        ("c", "BOOL", [2], bytes([1, 0])),
        ("h", "F16", [2], struct.pack("<2e", 1.5, -0.25)),
        ("z", "BF16", [2], struct.pack("<f", 3.0)[2:] + struct.pack("<f", -2.0)[2:]),
    ]
    header, off, data = {"__metadata__": {"who": "independent"}}, 0, b""
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    hj = json.dumps(header).encode()
    hj += b" " * (-len(hj) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + data)


if __name__ == "__main__":
    {"read": read, "write": write}[sys.argv[1]](sys.argv[2])
