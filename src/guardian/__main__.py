from guardian.launch import main

main()
