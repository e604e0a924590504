"""One module per ``framewatch`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""

# The offline commands embed with the sidecar's model (monitor.embedding.configured_embedder).
MODEL_DIR_HELP = ("embedding model folder (default: $FRAMEWATCH_MODEL_DIR, else models/minilm); the file in it is "
                  "$FRAMEWATCH_EMBEDDING_ONNX_FILE, default model.int8.onnx")
