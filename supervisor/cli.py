def main() -> None:
    print("bawt-vllm")
