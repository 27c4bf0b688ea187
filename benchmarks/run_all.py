"""Run every benchmark in one process, one after the other: ``make bench``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_core
import bench_maze
import bench_store

if __name__ == "__main__":
    print("== bench_core: what the Recorder costs the training thread ==")
    bench_core.main()
    print("\n== bench_maze: MazeProbe against the per-cell way and the bare forward ==")
    bench_maze.main([])
    print("\n== bench_store: append, file size, growth while open, load against raw .npy ==")
    bench_store.main([])
