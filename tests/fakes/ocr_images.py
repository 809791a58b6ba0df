"""Images with rendered text for the OCR expert's tests and its accuracy figure.

Drawn by ``evals.text_images.draw`` (PIL's bundled font, no system fonts needed), so they are
the same on every machine. Each case knows the text it shows, row by row in reading
order (cells of a row left to right).

    python -m tests.fakes.ocr_images     # the exact-match rate of RapidOCR on every case
"""

from __future__ import annotations

import random

from evals.text_images import TextCase, draw


def words() -> TextCase:
    return draw([["OPEN DAILY"], ["Coffee and Tea"]], col_width=360, name="words")


def numbers() -> TextCase:
    return draw([["Total", "42.50"], ["Tax", "3.40"]], name="numbers")


def table() -> TextCase:
    return draw(
        [["City", "Year", "Visitors"], ["Paris", "2021", "1250"], ["Rome", "2022", "980"]],
        grid=True,
        name="table",
    )


def basic_cases() -> list[TextCase]:
    return [words(), numbers(), table()]


_WORDS = ("apple", "river", "Station", "Market", "Exit", "North", "Garden", "Price", "Total",
          "Monday", "Ticket", "Hotel", "Bakery", "Library", "Museum", "Platform")  # fmt: skip


def generated_cases(n: int = 30, seed: int = 7) -> list[TextCase]:
    """``n`` random signs, price lists and tables (seeded): words, numbers, 1-3 columns."""
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        cols = rng.randint(1, 3)
        nrows = rng.randint(1, 3)
        rows = []
        for _ in range(nrows):
            row = []
            for c in range(cols):
                kind = rng.random()
                if kind < 0.4:
                    row.append(rng.choice(_WORDS))
                elif kind < 0.7:
                    row.append(f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}")
                elif c == 0:
                    row.append(f"{rng.choice(_WORDS)} {rng.choice(_WORDS).lower()}")
                else:
                    row.append(str(rng.randint(10, 99999)))
            rows.append(row)
        size = rng.choice((18, 22, 28, 36))
        grid = rng.random() < 0.3
        case = draw(rows, size=size, col_width=size * 9, row_height=size * 2, grid=grid,
                    name=f"gen{i:02d}")  # fmt: skip
        cases.append(case)
    return cases


def main() -> None:  # pragma: no cover - the figure in docs/accuracy.md
    import asyncio
    import time

    from models.ocr import OcrEngine
    from models.types import ImageInput

    async def run() -> None:
        engine = OcrEngine(timeout_s=120)
        await engine.start()
        cases = basic_cases() + generated_cases()
        exact_cells = total_cells = exact_images = order_ok = 0
        started = time.perf_counter()
        for case in cases:
            result = await engine.read(ImageInput(case.image))
            got = [line.text for line in result.lines]
            total_cells += len(case.cells)
            exact_cells += sum(1 for cell in case.cells if cell in got)
            exact_images += got == list(case.cells)
            order_ok += [c for c in got if c in case.cells] == [
                c for c in case.cells if c in got
            ]
            if got != list(case.cells):
                print(f"{case.name}: want {list(case.cells)} got {got}")
        seconds = time.perf_counter() - started
        print(f"images: {len(cases)}  cells: {total_cells}")
        print(f"cells recognised exactly: {exact_cells}/{total_cells} "
              f"({100 * exact_cells / total_cells:.1f}%)")  # fmt: skip
        print(f"images read exactly (all cells, in order): {exact_images}/{len(cases)} "
              f"({100 * exact_images / len(cases):.1f}%)")  # fmt: skip
        print(f"images whose recognised cells are in reading order: {order_ok}/{len(cases)}")
        print(f"mean seconds per image: {seconds / len(cases):.2f}")
        await engine.close()

    asyncio.run(run())


if __name__ == "__main__":  # pragma: no cover
    main()
