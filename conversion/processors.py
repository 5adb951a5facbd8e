"""Feature extractors, image processors and tokenizers written next to converted models.

fairseq dictionaries (``dict.txt``, ``dict.ltr.txt``) list one symbol per line, ``<symbol> <count>``
(optionally followed by ``#fairseq:overwrite``); fairseq numbers them after its four specials
``<s>=0 <pad>=1 </s>=2 <unk>=3``, in file order, and the masked-LM task appends ``<mask>``.

* CTC: fairseq's blank is index 0 (``<s>``), transformers' is ``pad_token_id``; the exported CTC
  vocabulary therefore names index 0 ``<pad>`` and index 1 ``<s>`` (as transformers' own wav2vec 2.0
  conversion does), so the rows of the output projection keep their meaning.
* RoBERTa-style text: the dictionary lists GPT-2 BPE *ids*, in fairseq's own order; the tokenizer
  vocabulary maps each GPT-2 BPE token (``encoder.json``) to the fairseq index of its id, with the
  GPT-2 merges (``vocab.bpe``) unchanged.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from .mapping import ConversionError

logger = logging.getLogger(__name__)

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
#: timm's ImageNet statistics, used by the BEiT codebase, MAE and fairseq's data2vec 2.0 image tasks
IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OVERWRITE_FLAG = "#fairseq:overwrite"


def read_fairseq_dictionary(path: str | Path) -> list[str]:
    """The symbols of a fairseq dictionary file, in index order *after* the four specials."""
    symbols: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.rstrip()
        if not line:
            continue
        overwrite = False
        word, _, field = line.rpartition(" ")
        if field == OVERWRITE_FLAG:
            overwrite = True
            word, _, field = word.rpartition(" ")
        if not word or not field.lstrip("-").isdigit():
            raise ConversionError(f"{path}:{number}: expected '<symbol> <count>', got {raw!r}")
        if word in seen and not overwrite:
            raise ConversionError(f"{path}:{number}: duplicate symbol {word!r} (without {OVERWRITE_FLAG})")
        if word not in seen:
            seen[word] = len(symbols)
            symbols.append(word)
    return symbols


# ---------------------------------------------------------------------------------------------- audio


def audio_feature_extractor(sampling_rate: int, normalize: bool):
    """What fairseq's audio task did to the waveform: nothing but an optional per-utterance
    zero-mean unit-variance normalisation (``task.normalize``)."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=int(sampling_rate),
        padding_value=0.0,
        do_normalize=bool(normalize),
        return_attention_mask=True,
    )


def ctc_vocabulary(dict_path: str | Path, num_labels: int) -> dict[str, int]:
    """``Wav2Vec2CTCTokenizer`` vocabulary for a fairseq letter dictionary (``dict.ltr.txt``)."""
    symbols = read_fairseq_dictionary(dict_path)
    clashes = sorted(set(symbols) & set(FAIRSEQ_SPECIALS))
    if clashes:
        raise ConversionError(f"{dict_path} redefines fairseq's special symbols {clashes}")
    if len(FAIRSEQ_SPECIALS) + len(symbols) != num_labels:
        raise ConversionError(
            f"{dict_path} has {len(symbols)} symbols + 4 specials = {len(symbols) + 4} labels, but the "
            f"checkpoint's output projection has {num_labels} rows; is it the dictionary of this model?"
        )
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({symbol: index for index, symbol in enumerate(symbols, start=4)})
    return vocab


def ctc_processor(feature_extractor, dict_path: Path | None, num_labels: int) -> tuple[list, list[str]]:
    """A ``Wav2Vec2Processor`` (feature extractor + CTC tokenizer) when the letter dictionary is given."""
    if dict_path is None:
        note = (
            "no tokenizer written: pass the fine-tuning letter dictionary with --dict dict.ltr.txt "
            "to get a Wav2Vec2CTCTokenizer"
        )
        logger.warning(note)
        return [feature_extractor], [note]
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    vocab = ctc_vocabulary(dict_path, num_labels)
    notes = []
    if "|" not in vocab:
        notes.append("the dictionary has no '|' word delimiter; decoded text will not be split into words")
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = Path(scratch) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file),
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            word_delimiter_token="|",
            do_lower_case=False,
        )
    logger.info("CTC tokenizer: %d labels from %s", len(vocab), dict_path)
    return [Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)], notes


# ----------------------------------------------------------------------------------------------- text


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConversionError(f"{path}: expected 'a b' merge lines, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def roberta_vocabulary(dict_path: Path, encoder_json: Path, vocab_size: int) -> dict[str, int]:
    """Map GPT-2 BPE tokens to fairseq indices through ``dict.txt`` (which lists GPT-2 ids)."""
    gpt2 = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    token_of_id = {int(i): token for token, i in gpt2.items()}
    vocab = {special: index for index, special in enumerate(FAIRSEQ_SPECIALS)}
    for index, symbol in enumerate(read_fairseq_dictionary(dict_path), start=len(FAIRSEQ_SPECIALS)):
        if symbol.isdigit():
            if int(symbol) not in token_of_id:
                raise ConversionError(
                    f"{dict_path} lists GPT-2 id {symbol}, which {encoder_json} does not have"
                )
            token = token_of_id[int(symbol)]
        else:
            token = symbol  # fairseq's own extra symbols (e.g. madeupword0000)
        if token in vocab:
            raise ConversionError(f"{dict_path}: token {token!r} appears twice")
        vocab[token] = index
    if len(vocab) == vocab_size - 1:
        vocab["<mask>"] = vocab_size - 1  # appended by fairseq's masked_lm task
    if len(vocab) != vocab_size or "<mask>" not in vocab:
        raise ConversionError(
            f"{dict_path} gives {len(vocab)} symbols (with specials and <mask>), but the checkpoint's "
            f"embedding has {vocab_size} rows; is it the dictionary of this model?"
        )
    return vocab


def roberta_tokenizer(
    dict_path: Path | None,
    encoder_json: Path | None,
    vocab_bpe: Path | None,
    vocab_size: int,
    max_positions: int,
) -> tuple[list, list[str]]:
    """A RoBERTa (byte-level BPE) tokenizer whose ids are the model's fairseq indices."""
    given = [p for p in (dict_path, encoder_json, vocab_bpe) if p is not None]
    if not given:
        note = (
            "no tokenizer written: pass --dict dict.txt --encoder_json encoder.json --vocab_bpe vocab.bpe "
            "(fairseq dictionary and GPT-2 BPE files) to get one"
        )
        logger.warning(note)
        return [], [note]
    if len(given) != 3:
        raise ConversionError("a text tokenizer needs all three of --dict, --encoder_json and --vocab_bpe")
    from transformers import RobertaTokenizer

    vocab = roberta_vocabulary(dict_path, encoder_json, vocab_size)
    merges = _read_merges(Path(vocab_bpe))
    # merges whose pieces or result are not in the fairseq vocabulary cannot be represented
    kept = [(a, b) for a, b in merges if a in vocab and b in vocab and a + b in vocab]
    notes = []
    if len(kept) != len(merges):
        notes.append(
            f"{len(merges) - len(kept)} GPT-2 merges produce tokens outside the dictionary; left out"
        )
        logger.warning(notes[-1])
    tokenizer = RobertaTokenizer(vocab=vocab, merges=kept, add_prefix_space=False)
    # fairseq positions start after the padding index: 2 rows are not usable positions
    tokenizer.model_max_length = max_positions - 2
    logger.info("RoBERTa tokenizer: %d tokens, %d merges", len(vocab), len(kept))
    return [tokenizer], notes


# --------------------------------------------------------------------------------------------- vision


def beit_image_processor(image_size: int, mean, std):
    """Resize to the model's resolution and normalise as the BEiT codebase did."""
    from transformers import BeitImageProcessor

    return BeitImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=3,  # bicubic
        do_center_crop=False,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_reduce_labels=False,
    )


def mae_image_processor(image_size: int, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
    """fairseq's data2vec 2.0 / MAE evaluation transform (``mae_finetuning_image_dataset.py``): bicubic
    resize of the shorter side to ``image_size / crop_pct`` (crop_pct 224/256 up to 224 px, else 1),
    centre crop to ``image_size``, ImageNet normalisation."""
    from transformers import BeitImageProcessor

    crop_pct = 224 / 256 if image_size <= 224 else 1.0
    return BeitImageProcessor(
        do_resize=True,
        size={"shortest_edge": int(image_size / crop_pct)},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_reduce_labels=False,
    )
