"""Admission checks for the API emulator, one module per topic (names, pod security, schemas, RBAC...).

Each module exposes functions `check(emulator, admission) -> None` that raise `op_emulator.refuse(...)`
to refuse a write the way kube-apiserver (or its admission chain) would; a test or fixture turns a
check on with `emulator.admission_checks.append(check)`. Every check has a test that proves it refuses
a bad object.
"""
