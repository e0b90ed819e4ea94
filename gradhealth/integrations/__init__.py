"""Framework callbacks for gradhealth.watch(): PyTorch Lightning (lightning) and Hugging Face (transformers)."""
