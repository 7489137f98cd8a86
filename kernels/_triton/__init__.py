"""Triton code shared by the ``dash``, ``nsa`` and ``infllmv2`` kernels.

- ``selection``: the compact selection format (one bit per query and block, GQA-shared) and the
  per-tile visit lists derived from it.
- ``block_sparse``: the fine stage, a flash-attention forward that visits only selected blocks, with the
  GQA group's query heads loaded together as rows of one tensor-core tile.
- ``launch``: small helpers shared by the launchers (powers of two, SM count, dtype checks).

Everything here is forward only (inference). Import this package only where Triton is installed.
"""
