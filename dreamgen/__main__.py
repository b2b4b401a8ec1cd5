from dreamgen.cli import main

main()
