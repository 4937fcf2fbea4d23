"""maml-tf."""
