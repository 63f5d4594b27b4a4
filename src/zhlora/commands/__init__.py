"""CLI verbs: glue that parses config, calls the library and writes artefacts."""
