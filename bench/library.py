"""Image library benchmark (printed figures, not a test). Run: `make bench-library`.

One account with 100,000 images (plus a second account with 20,000, so the indexes are
shared as in production), bulk-inserted with SQL (generate_series: seconds, not an insert
per row), then VACUUM ANALYZE. For a search, partial-word searches, filters and each sort
(both directions, first page and a page deep into the list through its cursor), it runs
the service's own queries (``billing.service.library``, what GraphQL ``images`` runs)
many times and prints p50/p99 in ms, page and ``totalCount`` apart, and the EXPLAIN
(ANALYZE) of each page query, failing if any plan reads ``assets`` or ``generations`` by
a sequential scan.

Uses its own database (fluxgate_bench_library), rebuilt on each run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from billing import library_repository as repo  # noqa: E402
from billing.db import make_engine, make_sessionmaker  # noqa: E402
from billing.migrate import drop_database, upgrade  # noqa: E402
from billing.service import library  # noqa: E402

DB_URL = os.environ.get(
    "FLUXGATE_BENCH_LIBRARY_DATABASE_URL",
    "postgresql+asyncpg://postgres@127.0.0.1:5432/fluxgate_bench_library",
)
WORDS = [
    "red",
    "fox",
    "mountain",
    "snowy",
    "portrait",
    "sailor",
    "harbour",
    "neon",
    "city",
    "night",
    "flying",
    "car",
    "forest",
    "river",
    "castle",
    "dragon",
    "robot",
    "garden",
    "sunset",
    "ocean",
    "desert",
    "cat",
    "dog",
    "owl",
    "bridge",
    "tower",
    "lantern",
    "rain",
    "storm",
    "island",
    "temple",
    "market",
    "train",
    "station",
    "winter",
    "summer",
    "autumn",
    "spring",
    "galaxy",
    "nebula",
    "moon",
    "star",
    "crystal",
    "cave",
    "waterfall",
    "meadow",
    "village",
    "street",
    "cafe",
    "library",
    "museum",
    "knight",
    "wizard",
    "pirate",
    "ship",
    "lighthouse",
    "canyon",
    "volcano",
    "glacier",
    "jungle",
    "tiger",
    "elephant",
    "whale",
]
STYLES = [
    "3d_render",
    "abstract",
    "anime",
    "art_deco",
    "cartoon",
    "digital_art",
    "illustration",
    "origami",
    "pixel_art",
    "photography",
    "pop_art",
    "retro",
    "sketch",
    "vaporwave",
]
SIZES = ((512, 512), (1024, 1024), (1024, 768), (768, 1024), (1536, 1024), (256, 256))


async def populate(session: AsyncSession, account_id: uuid.UUID, count: int, tag: str) -> None:
    """``count`` completed jobs with one output each, in two statements."""
    await session.execute(
        text(
            """INSERT INTO accounts (id, email, plan, webhook_secret, credits_available,
                   credits_reserved, created_at)
               VALUES (:id, :email, 'enterprise', 'x', 0, 0, now())"""
        ),
        {"id": account_id, "email": f"{tag}@bench.example"},
    )
    words = "ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]"
    styles = "ARRAY[" + ",".join(f"'{s}'" for s in STYLES) + "]"
    widths = "ARRAY[" + ",".join(str(w) for w, _ in SIZES) + "]"
    heights = "ARRAY[" + ",".join(str(h) for _, h in SIZES) + "]"
    n, s, z = len(WORDS), len(STYLES), len(SIZES)
    # Deterministic variety from i: prompts of 6 words, 10 % edits, 10 % upscales, 30 %
    # with a style, 5 % favourites, 20 % named, 10 % described; one image a minute.
    rows = f"""
        SELECT i,
          'bench{tag}' || lpad(i::text, 10, '0') AS gid,
          (SELECT string_agg(({words})[1 + ((i::bigint * k * 7919 + k * 104729) % {n})], ' ')
             FROM generate_series(1, 6) k) AS prompt,
          CASE WHEN i % 10 = 3 THEN 'edit' WHEN i % 10 = 7 THEN 'upscale'
               ELSE 'text_to_image' END AS kind,
          CASE WHEN i % 10 < 3 THEN ({styles})[1 + (i / 10) % {s}] END AS style,
          ({widths})[1 + i % {z}] AS width, ({heights})[1 + i % {z}] AS height,
          now() - make_interval(mins => i) AS at
        FROM generate_series(1, {count}) i"""
    await session.execute(
        text(
            f"""INSERT INTO generations (id, account_id, type, kind, params, provider, version,
                   quality, prompt, width, height, steps, guidance, seed, credit_cost, status,
                   progress, step, total_steps, outputs, metadata, preview, revision,
                   attempts, created_at, updated_at, completed_at)
                SELECT gid, :account, 'IMAGE', kind,
                   CASE WHEN style IS NULL THEN '{{}}'::jsonb
                        ELSE jsonb_build_object('style', style) END,
                   'flux-schnell', 'flux-schnell-1', 'standard', prompt, width, height, 4, 0,
                   i, 10, 'completed', 100, 4, 4, '[]', '{{}}', false, 3, 1, at, at, at
                FROM ({rows}) r"""
        ),
        {"account": account_id},
    )
    await session.execute(
        text(
            f"""INSERT INTO assets (id, account_id, generation_id, role, position, key, mime,
                   width, height, bytes, created_at, name, description, favorite,
                   thumbnail_key, kind, provider, version, prompt, preset_style)
                SELECT gen_random_uuid(), :account, gid, 'output', 0, gid || '-0.png',
                   'image/png', width, height, 200000 + (i * 7919) % 1800000, at,
                   CASE WHEN i % 5 = 0 THEN 'Image ' || (SELECT
                       string_agg(({words})[1 + ((i * k * 31 + k) % {n})], ' ')
                       FROM generate_series(1, 2) k) ELSE '' END,
                   CASE WHEN i % 10 = 1 THEN 'described as ' || prompt ELSE '' END,
                   i % 20 = 0, gid || '-0.thumb.webp', kind, 'flux-schnell',
                   'flux-schnell-1', prompt, style
                FROM ({rows}) r"""
        ),
        {"account": account_id},
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(call: Callable[[], Awaitable[Any]], runs: int) -> list[float]:
    await call()  # warm (plan cache, buffers)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def explain(session: AsyncSession, statement: Any) -> str:
    connection = await session.connection()
    compiled = statement.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    rows = await driver.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + compiled.string, *params)
    return "\n".join(r[0] for r in rows)


CASES: list[tuple[str, dict[str, Any]]] = [
    ("search 'mountain' (all fields)", {"search": "mountain"}),
    ("search 'fox river' (two words)", {"search": "fox river"}),
    ("search 'ountai' (partial, trigram)", {"search": "ountai"}),
    ("search 'castle' by name", {"search": "castle", "search_by": library.SearchBy.NAME}),
    ("filter kind=upscale", {"filter": library.ImageFilter(kinds=["upscale"])}),
    ("filter style=anime", {"filter": library.ImageFilter(style="anime")}),
    ("filter favorite", {"filter": library.ImageFilter(favorite=True)}),
    ("filter resolution=1024x1024", {"filter": library.ImageFilter(resolution="1024x1024")}),
    ("sort date desc", {"sort": library.SortBy.DATE}),
    ("sort date asc", {"sort": library.SortBy.DATE, "descending": False}),
    ("sort name asc", {"sort": library.SortBy.NAME, "descending": False}),
    ("sort name desc", {"sort": library.SortBy.NAME}),
    ("sort size desc", {"sort": library.SortBy.SIZE}),
    ("sort size asc", {"sort": library.SortBy.SIZE, "descending": False}),
    ("sort favorite desc", {"sort": library.SortBy.FAVORITE}),
]  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--explain", action="store_true", help="print every plan in full")
    args = parser.parse_args()
    await drop_database(DB_URL)
    await upgrade(DB_URL)
    engine = make_engine(DB_URL, pool_size=2, max_overflow=0)
    sessions = make_sessionmaker(engine)
    owner = uuid.uuid4()
    started = time.perf_counter()
    async with sessions() as session:
        await populate(session, owner, args.images, "a")
        await populate(session, uuid.uuid4(), args.images // 5, "b")
        await session.commit()
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE assets"))
        await conn.execute(text("VACUUM ANALYZE generations"))
    print(f"inserted {args.images} + {args.images // 5} images in "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    print(f"{'query':40} {'rows':>7} {'page p50':>9} {'p99':>7} {'deep p50':>9} {'p99':>7}"
          f" {'count p50':>10} {'p99':>7}  plan")  # fmt: skip
    failures = []
    async with sessions() as session:
        for label, options in CASES:
            q = library.query(owner, first=25, **options)
            page = await library.list_images(session, q)
            total = await library.count_images(session, q)
            first = await timed(partial(library.list_images, session, q), args.runs)
            # A page deep in the list: through the cursor of the 10th page's last row.
            deep_cursor = page.cursors[-1] if page.cursors else None
            for _ in range(9):
                if deep_cursor is None:
                    break
                nxt = await library.list_images(
                    session, library.query(owner, first=25, after=deep_cursor, **options)
                )
                deep_cursor = nxt.cursors[-1] if nxt.has_next else None
            deep_q = library.query(owner, first=25, after=deep_cursor, **options)
            deep = await timed(partial(library.list_images, session, deep_q), args.runs)
            counts = await timed(partial(library.count_images, session, q), args.runs)
            statement = repo.page_query(
                owner, q.where, sort=q.sort.value, descending=q.descending,
                after=deep_q.after, limit=26,
            )  # fmt: skip
            plan = await explain(session, statement)
            count_plan = await explain(session, repo.count_query(owner, q.where))
            scans = [
                line.strip() for line in (plan + "\n" + count_plan).splitlines()
                if "Seq Scan on assets" in line or "Seq Scan on generations" in line
            ]  # fmt: skip
            used = sorted({w for w in plan.split() if w.startswith("ix_assets_lib")})
            print(f"{label:40} {total:7d} {statistics.median(first):9.2f} "
                  f"{percentile(first, 0.99):7.2f} {statistics.median(deep):9.2f} "
                  f"{percentile(deep, 0.99):7.2f} {statistics.median(counts):10.2f} "
                  f"{percentile(counts, 0.99):7.2f}  {', '.join(used) or '?'}")  # fmt: skip
            if args.explain or scans:
                print(f"--- EXPLAIN page ({label})\n{plan}\n--- EXPLAIN count\n{count_plan}\n")
            if scans:
                failures.append((label, scans))
    await engine.dispose()
    if failures:
        print(f"SEQUENTIAL SCANS: {failures}")
        raise SystemExit(1)
    print("no sequential scan on assets or generations")


if __name__ == "__main__":
    asyncio.run(main())
