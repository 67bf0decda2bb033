"""The benchmark's statistics: cross-fitted operating points, the paired and hierarchical
bootstrap, multiple-testing control and learned-task bars (`bootstrap`), and the pooling of seeds
(`seedsplit`). Used by the reports only; the engine (`de3bert`) imports none of it."""
