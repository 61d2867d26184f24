"""Stage programs: one module per stage, each with main(argv) -> int."""
