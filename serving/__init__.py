"""clipq.serving: renders a Triton model repository from artifacts and runs tritonserver."""
