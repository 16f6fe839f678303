"""Planning: a training configuration from the data, the machine and a time budget."""
