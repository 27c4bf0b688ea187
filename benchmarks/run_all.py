"""Run every benchmark in one process, one after the other: ``make bench``.

Prints the machine, each benchmark's own output, and at the end one markdown table of every
figure (each a ratio of medians of interleaved runs taken in this run), ready for the README.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_core
import bench_lazy
import bench_maze
import bench_replay
import bench_setup
import bench_store
import bench_stream
from timing import machine, print_figures

if __name__ == "__main__":
    named = machine()
    print(named)
    print("\n== bench_core: what the Recorder costs the training thread ==")
    figures = bench_core.main([])
    print("\n== bench_maze: MazeProbe, and the maze example with and without the callback ==")
    figures += bench_maze.main([])
    print("\n== bench_setup: setup to first record in a fresh process; the device check at a due record ==")
    figures += bench_setup.main([])
    print("\n== bench_replay: a checkpoint series replayed, against live recording and the per-cell way ==")
    figures += bench_replay.main([])
    print("\n== bench_store: append, file size, growth while open, load against raw .npy ==")
    bench_store.main([])
    print("\n== bench_lazy: a 600 MB store opened and one record read, against reading it all and raw .npy ==")
    figures += bench_lazy.main([])
    print("\n== bench_stream: memory and writer time per record against records (10,000), all live parts on ==")
    bench_stream.main([])
    print_figures(
        f"All figures of bench_core, bench_maze, bench_setup, bench_replay and bench_lazy. Machine: {named}", figures
    )
