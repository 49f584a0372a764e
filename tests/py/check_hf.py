"""Interchange with Hugging Face transformers (CPU, fp32).
  check_hf.py verify BUNDLE EXPECT.safetensors  - LlamaForCausalLM.from_pretrained(BUNDLE) must give EXPECT's
                                                  "logits" for its "ids" (relative error <= 1e-4)
  check_hf.py make DIR OUT.safetensors          - save a small random LlamaForCausalLM to DIR and its logits
                                                  for random ids to OUT
  check_hf.py peft BASE ADAPTER MERGED          - peft.PeftModel.from_pretrained(BASE, ADAPTER) must give the
                                                  logits of MERGED (relative error <= 1e-4), with every LoRA
                                                  tensor of ADAPTER loaded"""
import sys
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

mode, path, data = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
if mode == "peft":
    from peft import PeftModel
    base = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, data).eval()
    merged = LlamaForCausalLM.from_pretrained(sys.argv[4], torch_dtype=torch.float32).eval()
    n_file = len(load_file(data + "/adapter_model.safetensors"))
    n_model = sum(1 for name, _ in adapted.named_parameters() if "lora_" in name)
    ids = torch.randint(0, base.config.vocab_size, (2, 12))
    with torch.no_grad():
        got, want = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
    err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-6)
    print(f"max relative error {err:.3g}; LoRA tensors: {n_file} in the file, {n_model} in the model")
    sys.exit(0 if err <= 1e-4 and n_file == n_model > 0 else 1)
elif mode == "verify":
    m = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    d = load_file(data)
    with torch.no_grad():
        got = m(input_ids=d["ids"]).logits
    want = d["logits"]
    err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-6)
    print(f"max relative error {err:.3g}")
    sys.exit(0 if err <= 1e-4 else 1)
elif mode == "make":
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)  # larger than the default init so the check sees real differences
    m.save_pretrained(path, safe_serialization=True)
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        logits = m(input_ids=ids).logits
    save_file({"ids": ids.contiguous(), "logits": logits.contiguous()}, data)
    print("ok")
