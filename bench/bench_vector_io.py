"""Which engine for the inline vector IO provider: recall@10, queries/s, cold load, size.

    python bench/bench_vector_io.py [--n 100000] [--dim 384] [--queries 500] [--engines ...]
    python bench/bench_vector_io.py --provider      # the inline provider itself (needs fnstack)

Data: ``n`` random-but-clustered unit vectors (``clusters`` centres, each point a centre
plus Gaussian noise, as sentence embeddings of a corpus bunch by topic) and held-out
queries drawn the same way. Ground truth is exact brute force (numpy float32 matmul).
Each engine is timed one query at a time on one thread - what one request costs - and
reports recall@10 against the exact top 10, queries/s, speed-up over brute force, build
time, index bytes on disk, and the cold load: a fresh Python process that imports the
engine, loads the saved index and answers one query (what a Lambda cold start pays).
Goal (issue 8): recall@10 >= 0.95 at >= 10x brute-force speed.

Engines missing from the environment are reported as such and skipped; install the
candidates with ``pip install usearch faiss-cpu hnswlib sqlite-vec lancedb``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one request = one thread, for every engine
os.environ.setdefault("RUST_LOG", "error")  # lancedb warns on every query otherwise

import numpy as np

K = 10


def make_data(n: int, dim: int, queries: int, clusters: int, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)

    def draw(count: int) -> Any:
        which = rng.integers(0, clusters, count)
        x = centres[which] + 0.7 * rng.standard_normal((count, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(queries)


def exact_topk(x: Any, q: Any) -> Any:
    out = np.empty((len(q), K), dtype=np.int64)
    for start in range(0, len(q), 256):
        sims = q[start : start + 256] @ x.T
        part = np.argpartition(-sims, K, axis=1)[:, :K]
        order = np.take_along_axis(sims, part, axis=1).argsort(axis=1)[:, ::-1]
        out[start : start + 256] = np.take_along_axis(part, order, axis=1)
    return out


def recall(found: list[list[int]], truth: Any) -> float:
    hits = sum(len(set(f[:K]) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * K)


def timed_queries(search: Callable[[Any], list[int]], q: Any) -> tuple[list[list[int]], float]:
    """Answers and the best of three rounds' queries/s (the machine may be shared)."""
    for row in q[:20]:  # warm caches and lazy initialisation
        search(row)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        found = [search(row) for row in q]
        best = max(best, len(q) / (time.perf_counter() - start))
    return found, best


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def installed_mb(dist: str, skip: frozenset[str] = frozenset({"numpy"})) -> float:
    """Unpacked size of a distribution and its dependencies (numpy is in the layer already)."""
    seen: set[str] = set()
    total = 0

    def walk(name: str) -> None:
        nonlocal total
        key = name.lower().replace("_", "-")
        if key in seen or key in skip:
            return
        seen.add(key)
        try:
            d = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return
        for f in d.files or []:
            p = Path(str(d.locate_file(f)))
            if p.is_file():
                total += p.stat().st_size
        for req in d.requires or []:
            if "extra ==" in req:
                continue
            walk(req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0]
                 .split("!")[0].split("~")[0].strip())

    walk(dist)
    return total / 1e6


def cold_load(code: str) -> float:
    """Seconds a fresh interpreter takes to run ``code`` (imports + load + one query)."""
    best = float("inf")
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", "import time; t0 = time.perf_counter()\n" + code
             + "\nprint(time.perf_counter() - t0)"],
            capture_output=True, text=True, check=True, env={**os.environ},
        )
        best = min(best, float(out.stdout.strip().splitlines()[-1]))
    return best


# --- engines: each builds in `folder`, returns (search, saved path, cold-load snippet) ---


def eng_usearch(x: Any, folder: Path, dtype: str = "f32", metric: str = "cos"
                ) -> tuple[Any, Path, str]:
    from usearch.index import Index

    # metric "ip" on unit vectors is cosine: the inline provider normalises at insert.
    index = Index(ndim=x.shape[1], metric=metric, dtype=dtype, connectivity=16,
                  expansion_add=128, expansion_search=64)
    index.add(np.arange(len(x), dtype=np.uint64), x, threads=1)
    path = folder / f"usearch_{dtype}_{metric}.usearch"
    index.save(str(path))

    def search(row: Any) -> list[int]:
        return [int(k) for k in index.search(row, K, threads=1).keys]

    snippet = (f"from usearch.index import Index\nimport numpy as np\n"
               f"i = Index.restore({str(path)!r})\ni.search(np.ones({x.shape[1]}, 'f4'), 10)")
    return search, path, snippet


def eng_faiss(x: Any, folder: Path) -> tuple[Any, Path, str]:
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(x.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    index.add(x)
    index.hnsw.efSearch = 64
    path = folder / "faiss.index"
    faiss.write_index(index, str(path))

    def search(row: Any) -> list[int]:
        return [int(i) for i in index.search(row[None, :], K)[1][0]]

    snippet = (f"import faiss, numpy as np\ni = faiss.read_index({str(path)!r})\n"
               f"i.search(np.ones((1, {x.shape[1]}), 'f4'), 10)")
    return search, path, snippet


def eng_hnswlib(x: Any, folder: Path) -> tuple[Any, Path, str]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=len(x), ef_construction=128, M=16)
    index.set_num_threads(1)
    index.add_items(x, np.arange(len(x)))
    index.set_ef(64)
    path = folder / "hnswlib.bin"
    index.save_index(str(path))

    def search(row: Any) -> list[int]:
        return [int(i) for i in index.knn_query(row, k=K)[0][0]]

    snippet = (f"import hnswlib, numpy as np\ni = hnswlib.Index(space='ip', dim={x.shape[1]})\n"
               f"i.load_index({str(path)!r})\ni.knn_query(np.ones({x.shape[1]}, 'f4'), k=10)")
    return search, path, snippet


def eng_sqlite_vec(x: Any, folder: Path) -> tuple[Any, Path, str]:
    import sqlite3

    import sqlite_vec

    path = folder / "sqlite_vec.db"
    db = sqlite3.connect(path)
    if not hasattr(db, "enable_load_extension"):
        raise RuntimeError("this Python's sqlite3 cannot load extensions")
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.execute(f"create virtual table v using vec0(e float[{x.shape[1]}] distance_metric=cosine)")
    db.executemany("insert into v(rowid, e) values (?, ?)",
                   ((i, row.tobytes()) for i, row in enumerate(x)))
    db.commit()
    sql = "select rowid from v where e match ? and k = 10 order by distance"

    def search(row: Any) -> list[int]:
        return [r[0] for r in db.execute(sql, (row.tobytes(),))]

    snippet = (f"import sqlite3, sqlite_vec, numpy as np\ndb = sqlite3.connect({str(path)!r})\n"
               "db.enable_load_extension(True); sqlite_vec.load(db)\n"
               f"db.execute({sql!r}, (np.ones({x.shape[1]}, 'f4').tobytes(),)).fetchall()")
    return search, path, snippet


def eng_lancedb(x: Any, folder: Path) -> tuple[Any, Path, str]:
    import lancedb
    import pyarrow as pa

    path = folder / "lance"
    db = lancedb.connect(str(path))
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    table = db.create_table("t", pa.table({"id": np.arange(len(x)), "vector": vectors}))
    table.create_index(metric="cosine", index_type="IVF_HNSW_SQ", num_partitions=64)

    def search(row: Any) -> list[int]:
        res = table.search(row).limit(K).select(["id"]).to_arrow()
        return [int(i) for i in res.column("id").to_pylist()]

    snippet = (f"import lancedb, numpy as np\nt = lancedb.connect({str(path)!r}).open_table('t')\n"
               f"t.search(np.ones({x.shape[1]}, 'f4')).limit(10).to_arrow()")
    return search, path, snippet


ENGINES: dict[str, tuple[str, Callable[[Any, Path], tuple[Any, Path, str]]]] = {
    "usearch-hnsw-f32": ("usearch", eng_usearch),
    "usearch-hnsw-f32-ip": ("usearch", lambda x, f: eng_usearch(x, f, "f32", "ip")),
    "usearch-hnsw-f16": ("usearch", lambda x, f: eng_usearch(x, f, "f16")),
    "faiss-hnsw-flat": ("faiss-cpu", eng_faiss),
    "hnswlib": ("hnswlib", eng_hnswlib),
    "sqlite-vec (exact)": ("sqlite-vec", eng_sqlite_vec),
    "lancedb-ivf-hnsw-sq": ("lancedb", eng_lancedb),
}


def bench_engines(args: argparse.Namespace) -> None:
    x, q = make_data(args.n, args.dim, args.queries, args.clusters)
    t = time.perf_counter()
    truth = exact_topk(x, q)
    print(f"data: {args.n} x {args.dim}, {args.clusters} clusters, {args.queries} queries "
          f"(ground truth {time.perf_counter() - t:.1f}s)", flush=True)

    def brute(row: Any) -> list[int]:
        sims = x @ row
        part = np.argpartition(-sims, K)[:K]
        return [int(i) for i in part[np.argsort(-sims[part])]]

    _, brute_qps = timed_queries(brute, q)
    rows = [("numpy brute force (exact)", 1.0, brute_qps, 0.0, x.nbytes, None, 0.0)]
    print(f"brute force: {brute_qps:.0f} q/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.engines:
            dist, build = ENGINES[name]
            try:
                importlib.metadata.distribution(dist)
            except importlib.metadata.PackageNotFoundError:
                print(f"{name}: {dist} not installed, skipped", flush=True)
                continue
            t = time.perf_counter()
            try:
                search, path, snippet = build(x, Path(tmp))
            except RuntimeError as exc:
                print(f"{name}: {exc}, skipped", flush=True)
                continue
            build_s = time.perf_counter() - t
            found, qps = timed_queries(search, q)
            rec = recall(found, truth)
            cold = cold_load(snippet)
            rows.append((name, rec, qps, build_s, dir_bytes(path), cold, installed_mb(dist)))
            print(f"{name}: recall@10 {rec:.3f}, {qps:.0f} q/s, build {build_s:.0f}s, "
                  f"cold load {cold:.2f}s", flush=True)
    print()
    print("| engine | recall@10 | queries/s | x brute force | build s | index MB | cold load s "
          "| install MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rec, qps, build_s, size, cold, mb in rows:
        cold_s = "-" if cold is None else f"{cold:.2f}"
        print(f"| {name} | {rec:.3f} | {qps:.0f} | {qps / brute_qps:.1f} | {build_s:.0f} "
              f"| {size / 1e6:.0f} | {cold_s} | {mb:.1f} |")


def bench_provider(args: argparse.Namespace) -> None:
    """The inline provider end to end: insert, vector and keyword q/s, cold open."""
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fnstack.api.vector_io import Chunk
    from fnstack.spec import ProviderContext
    from providers.vector_io.inline import InlineVectorIOConfig, create

    x, q = make_data(args.n, args.dim, args.queries, args.clusters)
    truth = exact_topk(x, q)
    words = [f"w{i}" for i in range(5000)]
    rng = np.random.default_rng(1)

    async def build(root: Path) -> None:
        ctx = ProviderContext(provider_id="bench", cache_dir=root)
        p = await create(InlineVectorIOConfig(root=str(root)), ctx)
        await p.create_index("vs", args.dim)
        t = time.perf_counter()
        for start in range(0, len(x), 2000):
            chunks = [
                Chunk(chunk_id=f"f{i // 50}:{i}", file_id=f"f{i // 50}",
                      content=" ".join(rng.choice(words, 60)), attributes={"n": i % 7},
                      embedding=x[i].tolist())
                for i in range(start, min(start + 2000, len(x)))
            ]
            await p.insert("vs", chunks)
        print(f"insert: {len(x) / (time.perf_counter() - t):.0f} chunks/s", flush=True)

        for mode in ("vector", "keyword"):
            t = time.perf_counter()
            found = []
            for i, row in enumerate(q):
                res = await p.query("vs", mode=mode, k=K, embedding=row.tolist(),
                                    text=f"{words[i % 5000]} {words[(i * 7) % 5000]}")
                found.append([int(r.chunk_id.split(":")[1]) for r in res])
            qps = len(q) / (time.perf_counter() - t)
            extra = f", recall@10 {recall(found, truth):.3f}" if mode == "vector" else ""
            print(f"{mode} query: {qps:.0f} q/s{extra}", flush=True)
        await p.shutdown()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(build(Path(tmp)))
        code = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
            "import asyncio\nfrom pathlib import Path\n"
            "from fnstack.spec import ProviderContext\n"
            "from providers.vector_io.inline import InlineVectorIOConfig, create\n"
            "async def main():\n"
            f"    p = await create(InlineVectorIOConfig(root={tmp!r}), "
            f"ProviderContext(provider_id='b', cache_dir=Path({tmp!r})))\n"
            f"    await p.query('vs', mode='vector', k=10, embedding=[1.0] * {args.dim})\n"
            "asyncio.run(main())"
        )
        print(f"cold open + first query of {args.n} chunks in a fresh process: "
              f"{cold_load(code):.2f}s; on disk {dir_bytes(Path(tmp)) / 1e6:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--provider", action="store_true", help="bench the inline provider")
    args = ap.parse_args()
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count()}))
    if args.provider:
        bench_provider(args)
    else:
        bench_engines(args)


if __name__ == "__main__":
    main()
