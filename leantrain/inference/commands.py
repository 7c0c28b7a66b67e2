"""The ``evaluate`` and ``predict`` subcommands: their arguments and what they run (cli.py only adds them)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from leantrain.errors import UsageError


def add_commands(commands: Any) -> None:
    """Add the subcommands to ``leantrain``'s subparsers."""
    evaluate = commands.add_parser("evaluate", help="exact match of a saved model on polynomial lines; writes its mistakes")
    evaluate.add_argument("model", type=Path, nargs="?", metavar="RUN_DIR_OR_MODEL",
                          help="a *.model.pt, or the run folder holding one (default: the polynomial model leantrain ships)")
    evaluate.add_argument("--data", required=True, help="polynomial-file:path=FILE (factored=expanded lines), "
                                                        "or polynomial:n=N,seed=S (generated)")
    evaluate.add_argument("--mistakes", type=Path, help="where to write the wrong lines (default: beside the model; for the "
                                                        "shipped model, in the current folder)")
    _shared(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    predict = commands.add_parser("predict", help="expand factored lines (stdin or FILE) with a saved model, one line out per line in")
    predict.add_argument("model", type=Path, nargs="?", metavar="RUN_DIR_OR_MODEL",
                         help="a *.pt model file or a run folder (default: the polynomial model leantrain ships); "
                              "any other path is read as FILE")
    predict.add_argument("file", type=Path, nargs="?", help="input lines (default: stdin)")
    _shared(predict)
    predict.set_defaults(handler=_predict)


def _shared(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=512, help="lines per batched decode (default 512)")
    parser.add_argument("--decode-cache", choices=("on", "off"), default="on",
                        help="on: cached decoding; off: recompute the prefix each step (same output, slower)")
    parser.add_argument("--beam", type=int, default=1,
                        help="1: greedy (default); K > 1: beam search keeping the K most likely expansions (slower)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch")


def _decoder(args: argparse.Namespace) -> Any:
    import torch

    from leantrain.config import resolve_device
    from leantrain.inference.lines import LineDecoder
    from leantrain.inference.model_file import load_model
    from leantrain.inference.shipped import shipped_model

    if args.threads is not None:
        if args.threads <= 0:
            raise UsageError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    saved = load_model(args.model or shipped_model(), resolve_device(args.device, "--device"))
    return LineDecoder(saved, cache=args.decode_cache == "on", batch_size=args.batch_size, beam=args.beam)


def _evaluate(args: argparse.Namespace) -> int:
    from leantrain.inference.evaluate import evaluate, evaluation_lines, render, write_mistakes

    decoder = _decoder(args)
    pairs = evaluation_lines(args.data, decoder)
    ev = evaluate(decoder, pairs)
    model_file: Path = decoder.saved.path
    beside = model_file.parent if args.model else Path()  # not into the installed package
    mistakes = args.mistakes or beside / (model_file.name.removesuffix(".model.pt") + ".mistakes.txt")
    write_mistakes(mistakes, ev)
    how = f"beam {args.beam}" if args.beam > 1 else f"greedy, decode cache {args.decode_cache}"
    print(render(ev, f"{model_file.name} on {args.data} ({how})"))
    print(f"mistakes ({len(ev.mistakes):,}): {mistakes}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from leantrain.inference.predict import predict_stream
    from leantrain.inference.shipped import is_model_path

    if args.file is None and args.model is not None and not is_model_path(args.model):
        args.model, args.file = None, args.model  # `leantrain predict lines.txt`: the shipped model on a file
    decoder = _decoder(args)
    if args.file is None:
        predict_stream(decoder, sys.stdin, sys.stdout, "stdin")
        return 0
    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such input file")
    with args.file.open(encoding="ascii", errors="replace") as stream:
        predict_stream(decoder, stream, sys.stdout, str(args.file))
    return 0
