"""The machine: its hardware (GPUs, memory, disk, CPU), physical cores, llama.cpp backend builds (pip rebuilds with CMake flags) and `localr1 doctor`."""
