"""Tests of the Helm chart under charts/sparse-attention-operator."""
