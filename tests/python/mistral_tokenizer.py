"""Mistral-style SentencePiece tokenizers for the tokenisation tests, built with the
Hugging Face `tokenizers` package, and the reference encoding of joint texts.

  make   --scheme first|always|legacy --corpus FILE --out tokenizer.json [--vocab N]
         a BPE over `▁`-marked words with byte fallback and <unk>, <s>, </s> at ids
         0, 1, 2 and <0x00>..<0xFF> at 3..258, as Mistral's tokenizer.json has them.
         `first` / `always`: a Metaspace pre-tokenizer with that prepend_scheme (the
         newer file); `legacy`: the older Prepend("▁") + Replace(" ", "▁") normalizer.
  encode --tokenizer FILE --texts FILE.json
         prints, for each text, {"ids": [...], "offsets": [[start, end], ...]} with
         character offsets, encoded without special tokens (BOS/EOS are ids the caller
         adds, as the post-processor would).
"""

import argparse
import json

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIALS = ["<unk>", "<s>", "</s>"]
BYTES = [f"<0x{i:02X}>" for i in range(256)]


def configure(tok, scheme):
    if scheme == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    else:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        tok.decoder = decoders.Sequence(
            [decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=False), decoders.ByteFallback(), decoders.Fuse()]
        )


def make(args):
    corpus = open(args.corpus, encoding="utf-8").read().splitlines()
    # Train the merges on `▁`-marked words (split so no piece spans two words, as
    # SentencePiece's pieces never do), then lay out the vocabulary as Mistral's.
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=SPECIALS, min_frequency=2, show_progress=False)
    draft.train_from_iterator(corpus, trainer)
    trained = json.loads(draft.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTES)}
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(SPECIALS)
    configure(tok, args.scheme)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.save(args.out)
    print(json.dumps({"vocab": tok.get_vocab_size(), "scheme": args.scheme}))


def encode(args):
    tok = Tokenizer.from_file(args.tokenizer)
    texts = json.load(open(args.texts, encoding="utf-8"))
    out = []
    for t in texts:
        e = tok.encode(t, add_special_tokens=False)
        out.append({"ids": e.ids, "offsets": [list(o) for o in e.offsets]})
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--scheme", choices=["first", "always", "legacy"], required=True)
    m.add_argument("--corpus", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--vocab", type=int, default=600)
    e = sub.add_parser("encode")
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--texts", required=True)
    args = p.parse_args()
    {"make": make, "encode": encode}[args.cmd](args)


if __name__ == "__main__":
    main()
