"""Programs that exercise the channel from outside, shared by the tests and the benchmarks:
an echo server (`echo_server`), the child-process runner it uses (`reporting_process`) and the
hostile-client fuzzer (`fuzzing`). They import the channel only, never the file system parts;
nothing here is installed with the project."""
