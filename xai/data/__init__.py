"""Real data: the photo manifest and Fashion-MNIST."""
