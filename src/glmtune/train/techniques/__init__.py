"""Training aids the loop and the tasks call: adversarial training, regularisation and schedules,
knowledge distillation, back-translation."""
