#!/usr/bin/env python3
"""The sweep preset: the default preset's English text (the Brown corpus and the King James
Bible, no dictionary) under a 512-token vocabulary (configs/data/sweep.json), so that the
sparsity sweep's small models are not mostly embeddings. The cache is filled as the default
preset fills it."""
import os
import runpy
import sys

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "preset_default.py"),
               run_name="__main__")
