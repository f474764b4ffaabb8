from sampler_bench.cli import main

main()
