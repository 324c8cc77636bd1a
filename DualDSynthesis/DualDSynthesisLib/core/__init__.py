"""Foundation: user errors, the vocabulary (variants, contrasts), limits, resource paths, console."""
