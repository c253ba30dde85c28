"""Build a tiny, deterministic Llama model + byte-level BPE tokenizer for the CPU vLLM test bed.

Run with the test bed venv's python (it has torch, transformers and tokenizers)::

    <testbed>/venv/bin/python scripts/build_tiny_model.py OUT_DIR

Nothing is downloaded: the tokenizer is trained on generated text, the weights are random from a
fixed seed, and every file is byte-for-byte the same on every build with the same library versions.
A manifest (``bawt_testbed_manifest.json``) records the sha256 of every file written.

The weights are random, so free text is gibberish; use structured outputs (a regex) to get exact
text, including hermes-style ``<tool_call>{...}</tool_call>`` tool calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Bump whenever anything below changes what gets written.
RECIPE = 1
SEED = 20240601
VOCAB_SIZE = 2048  # BPE vocab incl. special tokens; added tokens come on top
MANIFEST = "bawt_testbed_manifest.json"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]

LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    # hidden/heads would be 16; vLLM's CPU attention needs head_dim >= 32.
    "head_dim": 32,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

# ChatML, plus hermes-style tools (as in Qwen2.5 / Hermes 2 Pro): tool signatures as JSON lines
# inside <tools></tools> in the system prompt, assistant tool calls as
# <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>, tool results as <tool_response>.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" }}
    {{- "You are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments " }}
    {{- "within <tool_call></tool_call> XML tags:\n<tool_call>\n" }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + (message.content or '') + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + (message.content or '') + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

_WORD_TEXT = """
the be to of and a in that have it for not on with he as you do at this but his by from they we say
her she or an will my one all would there their what so up out if about who get which go me when make
can like time no just him know take people into year your good some could them see other than then now
look only come its over think also back after use two how our work first well way even new want because
any these give day most us is are was were been has had did said hello world model server request reply
answer question tool call function weather city paris london tokyo berlin temperature sunny rain cloud
wind today tomorrow search query result value number list item name argument arguments json text chat
assistant user system message content role health ready start stop load unload memory cache token tiny
test bed process engine worker port status error ok true false null yes done
"""
WORDS = _WORD_TEXT.split()

TOOL_NAMES = ["get_weather", "search", "add", "lookup_user", "send_message", "get_time"]
ARG_KEYS = ["city", "query", "a", "b", "user_id", "text", "timezone", "unit", "limit"]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!"])


def _args(rng: random.Random) -> dict:
    out: dict = {}
    for key in rng.sample(ARG_KEYS, rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.5:
            out[key] = rng.choice(WORDS).capitalize() if rng.random() < 0.5 else rng.choice(WORDS)
        elif kind < 0.8:
            out[key] = rng.randint(0, 1000)
        else:
            out[key] = rng.choice([True, False, None])
    return out


def make_corpus() -> list[str]:
    """Deterministic training text: prose, numbers, JSON, ChatML and hermes tool calls."""
    rng = random.Random(SEED)
    lines: list[str] = []
    for i in range(3000):
        r = rng.random()
        if r < 0.45:
            lines.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 4))))
        elif r < 0.6:
            lines.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(rng.randint(2, 8))))
        elif r < 0.8:
            call = {"name": rng.choice(TOOL_NAMES), "arguments": _args(rng)}
            lines.append("<tool_call>\n" + json.dumps(call) + "\n</tool_call>")
        else:
            user, assistant = _sentence(rng), _sentence(rng)
            lines.append(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n")
        if i % 97 == 0:
            lines.append(json.dumps({"type": "function", "function": {"name": rng.choice(TOOL_NAMES)}}))
    return lines


def build_tokenizer(out_dir: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = make_corpus()
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    # Not special: the hermes parser must see them in the decoded text.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=LLAMA["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(str(out_dir))
    return hf_tok


def build_model(out_dir: Path, vocab_size: int, eos_id: int, pad_id: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="bfloat16",
        **LLAMA,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    # Fill every tensor ourselves from one seeded generator, in name order, so the weights do not
    # depend on how transformers initialises modules.
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * 0.05)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for path in out_dir.iterdir():
        path.chmod(0o644)  # safetensors writes 0600


def write_manifest(out_dir: Path) -> dict:
    files = {}
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(out_dir).as_posix()
        if rel == MANIFEST or rel.startswith("."):
            continue
        files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"recipe": RECIPE, "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: {sys.argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    if out_dir.exists() and any(out_dir.iterdir()):
        print(f"{out_dir} exists and is not empty", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer(out_dir)
    vocab_size = len(tok)
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")
    for t in TOOL_TOKENS:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1, (t, ids)
    build_model(out_dir, vocab_size, eos_id, pad_id)
    manifest = write_manifest(out_dir)
    print(json.dumps({"out_dir": str(out_dir), "vocab_size": vocab_size, **manifest}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
