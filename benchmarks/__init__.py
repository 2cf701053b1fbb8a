"""Product benchmarks, run as modules from the repository root:

    python -m benchmarks.table1         the paper's Table 1, resumably (docs/results.md)
    python -m benchmarks.throughput     training steps against a plain XLA step and the
                                        matmul probe (docs/throughput.md)
    python -m benchmarks.epochs         whole epochs, an input iterator per epoch or one
                                        kept (docs/epochs.md)
    python -m benchmarks.time_to_error  training minutes to the paper's error, from runs
    python -m benchmarks.model_card     the shipped SavedModels' card (saved_models/)
    bash benchmarks/peak_memory.sh      peak memory of a training run

Each writes its numbers beside the command that produced them (`records`).
"""
