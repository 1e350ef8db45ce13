"""Internals of the LO2 generator (:mod:`batch.generate` is the public entry point).

Modules: ``schedule`` (runs, test order, durations, midnight), ``render`` (line formatting, ids,
Hazelcast routing), ``traffic`` (correct Locust tasks and request shapes per service), ``failures``
(the 53 error tasks), ``startup`` (container start-up lines), ``stacks`` (Java stack traces),
``simulate`` (one run, test by test) and ``writer`` (files and ``ground_truth.json``).
"""
