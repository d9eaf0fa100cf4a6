from guardian.cli.launch import main

main()
