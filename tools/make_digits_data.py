#!/usr/bin/env python3
"""Convert the UCI optical digits, as scikit-learn ships them, into sample-models/digits-data/digits.safetensors.

Usage:
    pip download --no-deps scikit-learn==1.7.2 -d /tmp/skl \\
        --python-version 3.11 --platform manylinux2014_x86_64 --only-binary=:all:
    python3 tools/make_digits_data.py /tmp/skl/scikit_learn-1.7.2-*.whl sample-models/digits-data/digits.safetensors

SOURCE is the scikit-learn wheel (the member sklearn/datasets/data/digits.csv.gz is read from it) or that
digits.csv.gz itself. The output holds, in data order (index tensors first, so that their I64 data is 8-byte aligned):
    train_index  I64 [1309]      row numbers of the training split, ascending
    calib_index  I64 [128]       row numbers of the calibration split, ascending
    eval_index   I64 [360]       row numbers of the evaluation split, ascending
    images       U8  [1797, 64]  pixel counts 0..16, row-major 8x8 (row h, column w at h * 8 + w)
    labels       U8  [1797]      digit 0..9

The split is stratified and seeded (SPLIT_SEED); the same algorithm is `stratified_split` in
examples/train_digits/net.rs, and the tests check that the committed file equals it:
    1. xorshift64 (13, 7, 17), state = (seed * 0x9E3779B97F4A7C15 mod 2^64) | 1.
    2. For class 0, 1, ..., 9 in turn: the rows of that class in ascending order are shuffled by Fisher-Yates,
       for i = n-1 down to 1: j = next() % (i + 1), swap positions i and j. Row at position k gets rank k.
    3. Every row gets the key (2k + 1) / (2 n_c), its rank's midpoint as a fraction of its class size n_c; rows
       are sorted by (key, class), comparing keys exactly by cross-multiplication. The first 360 rows are the
       evaluation split, the next 128 the calibration split, the rest the training split.
So every split holds each class in proportion to its size, within one image.

Standard library only (no numpy); the safetensors format is written by hand.
"""
import csv
import gzip
import hashlib
import io
import json
import struct
import sys
import zipfile
from functools import cmp_to_key

MEMBER = "sklearn/datasets/data/digits.csv.gz"
SPLIT_SEED = 1998
EVAL_LEN = 360
CALIB_LEN = 128
ROWS, PIXELS, CLASSES = 1797, 64, 10
MASK = (1 << 64) - 1


def read_csv_gz(source):
    """The compressed csv bytes, from the wheel or from the file itself."""
    if source.endswith(".whl"):
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(MEMBER)
    with open(source, "rb") as f:
        return f.read()


def parse(csv_gz):
    """(images as 1797 lists of 64 ints, labels as 1797 ints), checked for shape and range."""
    text = gzip.decompress(csv_gz).decode("ascii")
    images, labels = [], []
    for row in csv.reader(io.StringIO(text)):
        values = [int(float(v)) for v in row]
        if len(values) != PIXELS + 1:
            raise SystemExit(f"row {len(images)} has {len(values)} fields, expected {PIXELS + 1}")
        pixels, label = values[:PIXELS], values[PIXELS]
        if not all(0 <= p <= 16 for p in pixels) or not 0 <= label < CLASSES:
            raise SystemExit(f"row {len(images)} is out of range")
        images.append(pixels)
        labels.append(label)
    if len(images) != ROWS:
        raise SystemExit(f"{len(images)} rows, expected {ROWS}")
    return images, labels


class XorShift:
    def __init__(self, seed):
        self.state = ((seed * 0x9E3779B97F4A7C15) & MASK) | 1

    def next(self):
        s = self.state
        s ^= (s << 13) & MASK
        s ^= s >> 7
        s ^= (s << 17) & MASK
        self.state = s
        return s


def stratified_split(labels, seed, eval_len, calib_len):
    """(train, calib, eval) row numbers, each ascending; see the module text for the algorithm."""
    rng = XorShift(seed)
    keyed = []  # (rank, class size, class, row)
    for c in range(CLASSES):
        rows = [i for i, label in enumerate(labels) if label == c]
        for i in range(len(rows) - 1, 0, -1):
            j = rng.next() % (i + 1)
            rows[i], rows[j] = rows[j], rows[i]
        keyed.extend((k, len(rows), c, row) for k, row in enumerate(rows))

    def compare(a, b):
        left, right = (2 * a[0] + 1) * b[1], (2 * b[0] + 1) * a[1]
        if left != right:
            return -1 if left < right else 1
        return (a[2] > b[2]) - (a[2] < b[2])

    order = [row for *_, row in sorted(keyed, key=cmp_to_key(compare))]
    eval_rows = sorted(order[:eval_len])
    calib_rows = sorted(order[eval_len : eval_len + calib_len])
    train_rows = sorted(order[eval_len + calib_len :])
    return train_rows, calib_rows, eval_rows


def safetensors_bytes(tensors, metadata):
    """tensors: list of (name, dtype, shape, bytes), written in that order."""
    header, offset = {"__metadata__": metadata}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(data for *_, data in tensors)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    source, dest = sys.argv[1], sys.argv[2]
    csv_gz = read_csv_gz(source)
    images, labels = parse(csv_gz)
    train, calib, evaluation = stratified_split(labels, SPLIT_SEED, EVAL_LEN, CALIB_LEN)

    def index(rows):
        return struct.pack(f"<{len(rows)}q", *rows)

    tensors = [
        ("train_index", "I64", [len(train)], index(train)),
        ("calib_index", "I64", [len(calib)], index(calib)),
        ("eval_index", "I64", [len(evaluation)], index(evaluation)),
        ("images", "U8", [ROWS, PIXELS], bytes(p for image in images for p in image)),
        ("labels", "U8", [ROWS], bytes(labels)),
    ]
    metadata = {
        "source": "UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak, 1998), test set "
        "optdigits.tes, as scikit-learn ships it in " + MEMBER,
        "source_sha256": hashlib.sha256(csv_gz).hexdigest(),
        "licence": "CC BY 4.0 (UCI data); scikit-learn packaging BSD-3-Clause",
        "split": "stratified, seeded; see tools/make_digits_data.py",
        "split_seed": str(SPLIT_SEED),
        "pixel_range": "0..16",
    }
    with open(dest, "wb") as f:
        f.write(safetensors_bytes(tensors, metadata))
    counts = [sum(1 for r in rows if labels[r] == c) for rows in (train, calib, evaluation) for c in range(CLASSES)]
    print(f"wrote {dest}: train {len(train)}, calibration {len(calib)}, evaluation {len(evaluation)}")
    for name, start in (("train", 0), ("calibration", CLASSES), ("evaluation", 2 * CLASSES)):
        print(f"  {name:<12} per class {counts[start : start + CLASSES]}")


if __name__ == "__main__":
    main()
